"""`edgeskd loadtest` — N paced streams against one Triton server vs N local processes, in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeskd.cli.common import DEFAULT_THREADS, JsonOpt, OverwriteOpt, ThreadsOpt, cli_command, console


def _ms(v) -> str:
    return "—" if v is None else f"{v:.1f}"


@cli_command
def loadtest(
    artifact: Annotated[Path, typer.Argument(help="The .onnx (or .engine) the streams run: served, and run locally for the baseline.")],
    video: Annotated[str, typer.Option("--video", help="The source every stream plays in real time (paced at its frame rate), e.g. from `edgeskd synth-video`.")],
    streams: Annotated[int, typer.Option("--streams", help="Concurrent streams.")] = 8,
    server: Annotated[Optional[str], typer.Option("--server", help="grpc://HOST:PORT of a running server (default: start `edgeskd serve` on free ports and stop it at the end).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The model name on --server.")] = None,
    access_token: Annotated[Optional[str], typer.Option("--access-token", envvar="EDGESKD_SERVE_TOKEN", help="--server's access token (for Triton's statistics).")] = None,
    server_pid: Annotated[Optional[int], typer.Option("--server-pid", help="With --server on this machine: its process id, to count its CPU.")] = None,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="Stop each stream after this many decoded frames.")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="The started server's dynamic-batching limit.")] = 8,
    queue_delay_us: Annotated[int, typer.Option("--queue-delay-us", help="The started server's batching delay (µs).")] = 10000,
    local: Annotated[bool, typer.Option("--local/--no-local", help="Run the N local processes (the baseline) too.")] = True,
    threads: ThreadsOpt = DEFAULT_THREADS,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the report as JSON here.")] = None,
    as_json: JsonOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Load test: N concurrent real-time streams on one Triton server (frames, drops, latency, batch sizes,
    queue time, CPU per frame), and the same N streams as N local processes."""
    from edgeskd.serve.loadtest import LoadTestConfig, run_loadtest
    from edgeskd.utils.io import check_output_file, write_json_atomic

    if out is not None:
        check_output_file(out, overwrite=overwrite)
    report = run_loadtest(LoadTestConfig(
        artifact=artifact, video=video, streams=streams, server=server, model=model, access_token=access_token,
        server_pid=server_pid, max_frames=max_frames, threads=threads, max_batch_size=max_batch_size,
        queue_delay_us=queue_delay_us, local=local))
    if out is not None:
        write_json_atomic(out, report)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print(report)
    if out is not None:
        console.print(f"report: {out}", markup=False)


def _print(report: dict) -> None:
    console.print(f"{report['streams']} paced streams of {report['video']} on {report['cpu_count']} CPUs "
                  f"(1-min load average at the end {report['loadavg_1m']})", markup=False, soft_wrap=True)
    for ph in report["phases"]:
        t = ph["totals"]
        console.print(f"\n[{ph['name']}] {t['streams']} streams in {t['wall_s']} s", markup=False)
        console.print(f"{'stream':>6} {'frames':>7} {'dropped':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/frame':>12}  error",
                      markup=False)
        for r in ph["streams"]:
            console.print(f"{r['stream']:>6} {r['frames']:>7} {r['dropped']:>7} {_ms(r['p50_ms']):>7} "
                          f"{_ms(r['p99_ms']):>7} {_ms(r['cpu_ms_per_frame']):>12}  {r['error'] or ''}",
                          markup=False, soft_wrap=True)
        server_cpu = "" if t["server_cpu_s"] is None else f" + server {t['server_cpu_s']} s"
        console.print(f"{'all':>6} {t['frames']:>7} {t['dropped']:>7} {_ms(t['latency_p50_ms']):>7} "
                      f"{_ms(t['latency_p99_ms']):>7} {_ms(t['cpu_ms_per_frame']):>12}  ({_ms(t['cpu_ms_per_decoded_frame'])} "
                      f"per decoded frame; CPU: clients "
                      f"{t['client_cpu_s']} s{server_cpu}; failed streams {t['failed_streams']})",
                      markup=False, soft_wrap=True)
        tri = ph.get("triton")
        if tri:
            console.print(f"Triton: {tri['executions']} executions for {tri['inferences']} frames, mean batch "
                          f"{tri['mean_batch_size']}, batch sizes {tri['batch_size_histogram']}, mean queue "
                          f"{_ms(tri['mean_queue_ms'])} ms", markup=False, soft_wrap=True)
        for n in ph["notes"]:
            console.print(f"note: {n}", markup=False, soft_wrap=True)
    if report.get("cpu_per_frame_ratio_server_vs_local") is not None:
        console.print(f"\nCPU per frame, server (clients + server) / local: "
                      f"{report['cpu_per_frame_ratio_server_vs_local']}", markup=False)
