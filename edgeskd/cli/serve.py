"""`edgeskd serve` — serve a Triton repository or an artifact on Triton (the server PyTriton bundles), until Ctrl-C / SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeskd.cli.common import DEFAULT_THREADS, DeviceOpt, ThreadsOpt, cli_command, console, parse_device


@cli_command
def serve(
    source: Annotated[Path, typer.Argument(help="A Triton repository from `edgeskd export --format triton`, or an .onnx / .engine artifact.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Artifact: the model's name on the server (default: its metadata / file name). Repository: serve only this model.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP/REST port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC port (what `edgeskd stream --server` uses).")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Prometheus metrics port.")] = 8002,
    access_token: Annotated[Optional[str], typer.Option("--access-token", envvar="EDGESKD_SERVE_TOKEN", show_envvar=True, help="Token for the restricted endpoints (statistics, model repository, shared memory, logging, trace). Default: a new one, printed once.")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Largest batch Triton's dynamic batcher forms from concurrent requests.")] = 8,
    queue_delay_us: Annotated[int, typer.Option("--queue-delay-us", help="How long (µs) a request may wait for others to batch with (10 ms: on a CPU server each execution costs ~2 ms of CPU, so fewer, larger batches keep up with more streams).")] = 10000,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = DEFAULT_THREADS,
    log_file: Annotated[Optional[Path], typer.Option("--log-file", help="Keep tritonserver's log here (default: removed at the stop).")] = None,
) -> None:
    """Serve models on NVIDIA Triton (the server PyTriton bundles) with dynamic batching, until Ctrl-C or SIGTERM."""
    from edgeskd.serve.server import ServeConfig, ServerInfo
    from edgeskd.serve.server import serve as run_server

    cfg = ServeConfig(source=source, model=model, host=host, http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, access_token=access_token, max_batch_size=max_batch_size,
                      queue_delay_us=queue_delay_us, device=parse_device(device), threads=threads, log_file=log_file)

    def on_ready(info: ServerInfo) -> None:
        for m in info.models:
            meta = m.runner.metadata
            console.print(f"model {m.name}: {m.source} ({m.runner.backend}, {meta.precision}, input "
                          f"{m.input_name} 3x{meta.input_size[0]}x{meta.input_size[1]} → {m.output_name}, "
                          f"max batch {m.max_batch_size})", soft_wrap=True, markup=False)
        console.print(f"ready in {info.started_s:.1f} s: gRPC {info.grpc_url}  HTTP {info.http_url}  metrics "
                      f"{info.metrics_url}  (health: GET {info.http_url}/v2/health/ready)", soft_wrap=True,
                      markup=False)
        if info.token_generated:
            console.print(f"access token (statistics, repository): {info.access_token}  — pass it as "
                          "--access-token or $EDGESKD_SERVE_TOKEN", soft_wrap=True, markup=False)
        console.print("stop with Ctrl-C or SIGTERM", markup=False)
        console.file.flush()

    signum = run_server(cfg, on_ready=on_ready)
    name = signal.Signals(signum).name if signum else "stop"
    console.print(f"stopped ({name}); workspace and shared memory removed", markup=False)
