"""`edgeskd build-engine` — FP32 ONNX → INT8/FP16/FP32 artifact for TensorRT or ONNX Runtime, gated."""

from __future__ import annotations

import contextlib
import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeskd.cli.common import (DEFAULT_THREADS, DeviceOpt, ThreadsOpt, JsonOpt, OverwriteOpt, cli_command, console, err_console, parse_device, parse_img_size,
                                warn)
from edgeskd.errors import UsageError


class Precision(str, Enum):
    int8 = "int8"
    fp16 = "fp16"
    fp32 = "fp32"


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"


class CalibMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


def parse_overrides(img_size: str | None, classes: str | None) -> dict | None:
    """--img-size N|HxW / --classes a,b → ModelMeta fields for an ONNX without edgeskd metadata."""
    d: dict = {}
    size = parse_img_size(img_size)
    if size is not None:
        d["input_size"] = list(size)
    if classes:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if len(names) < 2:
            raise UsageError("--classes needs at least two comma-separated names")
        d["class_names"] = names
    return d or None


@cli_command
def build_engine(
    onnx: Annotated[Path, typer.Argument(help="FP32 ONNX from `edgeskd export`, or a Q/DQ INT8 ONNX from `edgeskd qat` (built as is, --precision int8).")],
    precision: Annotated[Precision, typer.Option("--precision", help="Artifact precision.")] = Precision.int8,
    backend: Annotated[Backend, typer.Option("--backend", help="auto = tensorrt with a GPU, else onnxruntime.")] = Backend.auto,
    out: Annotated[Path | None, typer.Option("--out", help="Output artifact (default next to the ONNX); the Q/DQ ONNX and the report go in the same folder.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data set for the accuracy gate (default: the model's training data).")] = None,
    calib_data: Annotated[Path | None, typer.Option("--calib-data", help="Calibration images (default: the training split).")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", help="Calibration images (stratified, seeded).")] = 512,
    calib_seed: Annotated[int, typer.Option("--calib-seed", min=0, help="Seed of the calibration pick.")] = 0,
    calib_method: Annotated[CalibMethod, typer.Option("--calib-method", help="Range calibration.")] = CalibMethod.minmax,
    calib_dir: Annotated[Path, typer.Option("--calib-dir", help="Where calibrated ranges and the TensorRT timing cache live.")] = Path("calibration"),
    max_f1_drop: Annotated[float, typer.Option("--max-f1-drop", help="Largest allowed F1 drop (points) vs FP32.")] = 1.0,
    force: Annotated[bool, typer.Option("--force", help="Keep an artifact that fails the accuracy gate.")] = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    workspace: Annotated[float, typer.Option("--workspace", help="TensorRT workspace limit, GiB.")] = 1.0,
    max_batch: Annotated[int, typer.Option("--max-batch-size", "--max-batch", help="TensorRT profile: batch 1..N (the largest batch the engine takes; --max-batch is the older name).")] = 8,
    threads: ThreadsOpt = DEFAULT_THREADS,
    weight_qdq_pair: Annotated[bool, typer.Option("--weight-qdq-pair", help="Float weights with Q→DQ pairs instead of INT8 weights.")] = False,
    img_size: Annotated[str | None, typer.Option("--img-size", help="N or HxW, for an ONNX without edgeskd metadata.")] = None,
    classes: Annotated[str | None, typer.Option("--classes", help="Comma-separated class names, for an ONNX without metadata.")] = None,
    recovery: Annotated[bool, typer.Option("--recovery/--no-recovery", help="INT8 failing the gate: keep the most sensitive layers in FP32, try other calibrations.")] = True,
    recovery_budget: Annotated[float, typer.Option("--recovery-budget", help="Time limit of PTQ recovery, seconds.")] = 600.0,
    max_fp32_layers: Annotated[int | None, typer.Option("--max-fp32-layers", help="Most layers recovery may keep in FP32 (default: a quarter of them).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build an INT8 (Q/DQ), FP16 or FP32 artifact; INT8/FP16 must pass the accuracy gate."""
    from edgeskd.engine.build import build_engine as build

    dev = parse_device(device)
    if dev == "cpu" and backend == Backend.tensorrt:
        raise UsageError("--backend tensorrt runs on a GPU; drop --device cpu or choose --backend onnxruntime")
    if dev == "cpu":
        backend = Backend.onnxruntime
    elif dev.startswith("cuda") and backend == Backend.auto:   # a GPU asked for by name: TensorRT or one line
        backend = Backend.tensorrt
    status = err_console.status("building…") if err_console.is_terminal and not as_json else None

    def log(line: str) -> None:   # each step on the console; on a terminal also the spinner's text
        if not as_json:
            console.print(line)
        if status is not None:
            status.update(line[:100])

    options = dict(
        precision=precision.value, backend=backend.value, out=out, data=data, calib_data=calib_data,
        calib_size=calib_size, calib_seed=calib_seed, calib_method=calib_method.value, calib_dir=calib_dir,
        max_f1_drop=max_f1_drop, force=force, overwrite=overwrite, workspace_gib=workspace, max_batch=max_batch,
        threads=threads, weight_qdq_pair=weight_qdq_pair, meta_overrides=parse_overrides(img_size, classes),
        recovery=recovery, recovery_budget_s=recovery_budget, max_fp32_layers=max_fp32_layers,
        device=0 if dev in ("auto", "cpu") else dev)
    with status if status is not None else contextlib.nullcontext():
        rep = build(onnx, log=log, **options)
    _report(rep, as_json)


def _report(rep, as_json: bool) -> None:
    for w in rep.warnings:
        warn(w)
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), indent=2))
        return
    from rich.table import Table

    t = Table(title=f"{rep.backend} {rep.precision}: tried (FP32 F1 {rep.fp32_f1:.2f})")
    for col in ("variant", "F1", "drop", "ECE", "NPV", "cover", "p50 ms", "p99 ms", "img/s", "size kB", "gate"):
        t.add_column(col, justify="right" if col != "variant" else "left")
    for c in rep.candidates:
        t.add_row(c.name + (" *" if c.name == rep.winner else ""), f"{c.f1:.2f}", f"{c.f1_drop:+.2f}",
                  _clin(c.ece, c.clinical_change.get("ece")), _clin(c.npv, c.clinical_change.get("npv")),
                  _clin(c.coverage, c.clinical_change.get("coverage")),
                  f"{c.p50_ms:.3f}", f"{c.p99_ms:.3f}", f"{c.throughput:.0f}", f"{c.size_bytes / 1e3:.0f}",
                  "ref" if c.note == "reference" else ("pass" if c.passed else "FAIL"))
    console.print(t)
    thr = next((c.threshold for c in rep.candidates), None)
    console.print(f"ECE, NPV and coverage (%) on the validation split at the artifact's "
                  f"{f'threshold {thr:.3f}' if thr is not None else 'argmax (it carries no threshold)'}; "
                  "(±) = change vs FP32 in points", soft_wrap=True)
    if rep.subclass_counts:
        console.print(subclass_table(rep))
    console.print(f"winner: {rep.reason}")
    for n in rep.notes:
        console.print(f"note: {n}", markup=False)
    for p in rep.extra_artifacts:
        console.print(f"wrote {p}")
    console.print(f"wrote {rep.artifact}")


def _clin(v: float | None, change: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" + ("" if change is None else f" ({change:+.2f})")


def subclass_table(rep):
    """Accuracy per data subclass on validation: FP32 and every candidate, with the change in points."""
    from rich.table import Table

    cands = [c for c in rep.candidates if c.note != "reference" and c.per_subclass]
    t = Table(title="accuracy per subclass (validation, %): change vs FP32")
    for col in ("subclass", "n", "FP32", *(c.name + (" *" if c.name == rep.winner else "") for c in cands)):
        t.add_column(col, justify="left" if col == "subclass" else "right")
    change = rep.per_subclass_change()
    for sub, n in rep.subclass_counts.items():
        fp32 = rep.fp32_per_subclass.get(sub)
        cells = [f"{c.per_subclass[sub]:.1f} ({change[c.name][sub]:+.1f})" if sub in change.get(c.name, {}) else "–"
                 for c in cands]
        t.add_row(sub, str(n), "–" if fp32 is None else f"{fp32:.1f}", *cells)
    return t
