"""`edgeskd qat` — quantization-aware distillation of a student → Q/DQ INT8 ONNX for TensorRT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeskd.cli.common import JsonOpt, OverwriteOpt, cli_command, console, warn


@cli_command
def qat(
    checkpoint: Annotated[Path, typer.Argument(help="Student checkpoint from `edgeskd train` (student-*.pt).")],
    teacher: Annotated[Path | None, typer.Option("--teacher", help="The teacher it was distilled from (default: teacher.pt next to the checkpoint).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data set (default: the checkpoint's training data).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="QAT epochs (default: a tenth of the student's, at least 1).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default: 5% of the student's).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size (default: the student's).")] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", help="Training images that initialise the activation ranges.")] = 512,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Output Q/DQ ONNX (default engines/<checkpoint>.qat.onnx).")] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a student with TensorRT-style INT8 fake quantization and its own distillation loss; write a Q/DQ ONNX."""
    from edgeskd.quantize.qat import run_qat

    res = run_qat(checkpoint, teacher=teacher, data=data, epochs=epochs, lr=lr, batch_size=batch_size,
                  calib_size=calib_size, seed=seed, out=out, overwrite=overwrite, log=(lambda s: None) if as_json else console.print)
    for n in res.notes:
        warn(n)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2, default=str))
        return
    v, t = res.val_f1, res.test
    console.print(f"wrote {res.path} ({res.path.stat().st_size / 1e3:.0f} kB Q/DQ INT8, {res.mode} loss, "
                  f"{res.epochs} epoch(s), {res.seconds:.0f} s"
                  + (f" = {100 * res.seconds / res.train_seconds:.0f}% of the student's training time"
                     if res.train_seconds else "") + ")")
    console.print(f"validation F1: FP32 {v['fp32']:.2f}, calibrated INT8 {v['ptq']:.2f}, after QAT {v['qat']:.2f}")
    if t:
        console.print(f"test F1 ({t['n']} images): FP32 {t['fp32']['f1']:.2f}, Q/DQ ONNX in ONNX Runtime "
                      f"{t['onnx_int8']['f1']:.2f} (drop {t['f1_drop']:+.2f})")
    console.print(f"parity torch fake-quant vs ONNX Runtime: max |Δ logit| {res.parity['max_abs_diff']:.3g}, "
                  f"top-1 agreement {100 * res.parity['top1_agreement']:.1f}%")
    console.print(f"next: edgeskd build-engine {res.path}  (TensorRT builds it as is; no calibration)", markup=False)
