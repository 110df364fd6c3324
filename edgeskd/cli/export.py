"""`edgeskd export` — checkpoint → ONNX with metadata, checked against torch."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeskd.cli.common import DeviceOpt, JsonOpt, OverwriteOpt, cli_command, console, warn


class ExportFormat(str, Enum):
    onnx = "onnx"
    triton = "triton"
    deepstream = "deepstream"


@cli_command
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint from `edgeskd train` (student-*.pt / teacher.pt).")],
    out: Annotated[Path | None, typer.Option("--out", help="Output .onnx (default engines/<checkpoint>.onnx).")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (>= 13 for Q/DQ INT8).")] = 17,
    batch_size: Annotated[str, typer.Option("--batch-size", help="'dynamic' batch axis, or a fixed batch size N.")] = "dynamic",
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnxsim.")] = True,
    data: Annotated[Path | None, typer.Option("--data", help="Data for the parity check (default: the checkpoint's training data).")] = None,
    parity_samples: Annotated[int, typer.Option("--parity-samples", help="Test-split images for the torch vs ONNX check.")] = 256,
    as_json: JsonOpt = False,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="onnx; triton: a Triton model repository at --out (a new version if the model is there); deepstream: an nvinfer folder at --out. triton/deepstream also take an .onnx / .engine artifact instead of a checkpoint.")] = ExportFormat.onnx,
    model_name: Annotated[str | None, typer.Option("--model-name", help="triton: the model's name in the repository (default: from its metadata / file name).")] = None,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size", help="triton/deepstream: largest batch (default 8 for triton, the engine's profile max if lower; 1 for deepstream).")] = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, onnxsim, onnx.checker, metadata, parity vs torch), or
    package a model for Triton / DeepStream."""
    from edgeskd.cli.common import parse_device
    from edgeskd.export.onnx_export import export_onnx

    dev = parse_device(device)   # checked for every format (the plain ONNX export runs on the CPU)
    if fmt is not ExportFormat.onnx:
        from edgeskd.serve.packaging import package

        res = package(checkpoint, fmt.value, out, model_name=model_name, max_batch_size=max_batch_size,
                      device=dev, overwrite=overwrite, opset=opset, simplify=simplify, data=data,
                      parity_samples=parity_samples)
        for n in res.notes:
            warn(n)
        if as_json:
            typer.echo(json.dumps(res.to_dict(), indent=2))
        else:
            for line in res.lines:
                console.print(line, markup=False, soft_wrap=True)
        return

    res = export_onnx(checkpoint, out, opset=opset, batch=batch_size, simplify=simplify, data_path=data,
                      parity_samples=parity_samples, overwrite=overwrite)
    for n in res.notes:
        warn(n)
    if as_json:
        typer.echo(json.dumps({"path": str(res.path), "size_bytes": res.size_bytes, "opset": res.opset,
                               "batch": res.batch, "simplified": res.simplified, "parity": res.parity.to_dict(),
                               "output": res.meta.output}, indent=2))
        return
    p = res.parity
    console.print(f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, opset {res.opset}, batch {res.batch}, "
                  f"output {res.meta.output}{', simplified' if res.simplified else ''})")
    console.print(f"parity vs torch on {p.source}: max |Δ logit| {p.max_abs_diff:.2e} (limit {p.tolerance:g}), "
                  f"top-1 agreement {100 * p.top1_agreement:.1f}%")
