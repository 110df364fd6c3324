"""`edgeskd bench ARTIFACT...`: accuracy and speed of every artifact, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeskd.cli.common import (DEFAULT_THREADS, DataFormat, DeviceOpt, OverwriteOpt, ThreadsOpt, cli_command, console,
                                err_console, parse_device, warn)
from edgeskd.errors import ArtifactError, UsageError

PLOT_SUFFIXES = (".png",)   # the plot is saved as PNG (bench.report.plot)


def _parse_batches(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r} must be comma-separated integers, e.g. 1,8,32") from None
    if not vals or any(v <= 0 for v in vals):
        raise UsageError(f"--batch-sizes {text!r}: every batch size must be a positive integer")
    return vals


def _nothing():
    import contextlib

    return contextlib.nullcontext()


@cli_command
def bench(
    artifacts: Annotated[list[Path], typer.Argument(help="Run directories, checkpoints, .onnx, .engine, or folders of them.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Data set; default: what the artifacts were trained on (else the synthetic default).")] = None,
    format: Annotated[DataFormat, typer.Option("--format", help="Data format.")] = DataFormat.auto,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate: train, val or test.")] = "test",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Throughput batch sizes.")] = "1,8,32",
    threads: ThreadsOpt = DEFAULT_THREADS,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up calls.")] = 20,
    iters: Annotated[int, typer.Option("--iters", help="Timed calls per batch size.")] = 200,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Cap on each timing phase (s).")] = 10.0,
    device: Annotated[str, typer.Option("--device", help="Where torch and ONNX rows run: cpu, cuda or cuda:N (TensorRT rows are always on a GPU).")] = "cpu",
    out: Annotated[Path, typer.Option("--out", help="JSON output.")] = Path("bench.json"),
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="PNG plot (latency vs F1, throughput vs batch).")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a markdown table instead of a rich table.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Every column (the default table fits 120 columns).")] = False,
    video: Annotated[Optional[Path], typer.Option("--video", help="A labelled video: each artifact also streams it (every frame) for the video figures of `stream --labels`.")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Its per-frame labels CSV (frame,class[,subclass],polyp_id); with --video.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Bench every artifact: F1/accuracy/AUC through the runtime, latency p50/p99, throughput, size,
    FLOPs vs this machine's measured GEMM peak, speed-up vs torch eager, F1 change vs FP32 (and per subclass);
    with --video/--labels also its figures on a labelled video beside its image-test figures."""
    from edgeskd.bench.discover import discover
    from edgeskd.bench.machine import machine_info
    from edgeskd.bench.measure import BenchOptions, run_bench
    from edgeskd.bench.report import markdown as to_markdown
    from edgeskd.bench.report import failures, plot, rich_table, subclass_rows, subclass_table
    from edgeskd.bench.video import check_video_inputs, video_rows, video_table
    from edgeskd.data.artifact_data import data_refs, describe_data_ref, load_data
    from edgeskd.utils.io import check_output_file, write_json_atomic

    if split not in ("train", "val", "test"):
        raise UsageError(f"--split {split!r} must be train, val or test")
    dev = parse_device(device)
    dev = "cpu" if dev == "auto" else dev
    opts = BenchOptions(batch_sizes=_parse_batches(batch_sizes), threads=threads, warmup=warmup, iters=iters,
                        device=dev, max_seconds_per_timing=max_seconds)
    check_output_file(out, overwrite=overwrite, suffixes=(".json",), option="--out")
    if plot_path is not None:
        check_output_file(plot_path, overwrite=overwrite, suffixes=PLOT_SUFFIXES, option="--plot")
    check_video_inputs(video, labels)
    arts = discover(artifacts)
    bad = [a for a in arts if a.error]
    if bad:   # before any data is prepared or cached
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ArtifactError(f"{bad[0].error}{more}; bench takes run directories, .pt, .onnx and .engine files")
    refs = [] if data is not None else data_refs(a.path for a in arts if not a.error)
    if len(refs) > 1:
        warn(f"the artifacts were trained on {len(refs)} different data sets; all are benched on the first "
             f"({describe_data_ref(refs[0])}) — bench each run on its own or give --data")
    with err_console.status("preparing the benchmark data…") if err_console.is_terminal else _nothing():
        dataset = load_data(refs[0] if refs else None, path=data, fmt=format.value)
    part = dataset.split(split)
    if len(part) == 0:
        raise UsageError(f"the data has no {split!r} split; choose another with --split")

    err_console.print(f"benching {len(arts)} artifact(s) on {split} (n={len(part)}), {threads} thread(s)…")
    machine = machine_info(threads)
    result = run_bench(arts, part, opts, machine=machine,
                       on_row=lambda r: err_console.print(f"  {r.name:<28} {r.backend:<12} {r.status}"
                                                          + (f": {r.error}" if r.error else "")))
    result["split"] = split
    result["n_images"] = len(part)
    if getattr(part, "background_class", None) is not None:   # F1, NPV, cover: on the polyp images only
        result["n_polyp_images"] = int(sum(int(y) != part.background_class for y in part.labels))
    if video is not None and labels is not None:
        err_console.print(f"streaming {video} through {len(arts)} artifact(s) (every frame)…")
        result["video"] = video_rows(arts, video, labels, threads=threads, device=dev,   # where the image rows ran
                                     on_row=lambda r: err_console.print(f"  {r['name']:<28} {r['status']}"
                                                                        + (f": {r['error']}" if r.get("error") else "")))
    write_json_atomic(out, result)
    if plot_path is not None:
        plot(result, plot_path)
    if markdown:
        console.print(to_markdown(result), markup=False, soft_wrap=True)
    else:
        console.print(rich_table(result, wide=wide))
        if wide and subclass_rows(result)[0]:
            console.print(subclass_table(result))
        for line in failures(result):
            console.print(f"failed: {line}", markup=False, soft_wrap=True)
    if "video" in result:
        console.print(video_table(result["video"]))
    console.print(f"wrote {out}" + (f" and {plot_path}" if plot_path else ""))
    failed = [r for r in result["rows"] + (result.get("video") or {}).get("rows", []) if r["status"] != "ok"]
    if failed:
        raise typer.Exit(1)
