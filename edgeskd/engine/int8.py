"""build-engine's INT8 preparation, before any backend builds:

* a Q/DQ INT8 ONNX given as the source (``edgeskd qat``'s output) is built as it is — no
  calibration; only ``--precision int8`` takes it;
* for an FP32 source, the INT8 plan (``quantize.recovery.plan_int8``): the calibration method and the
  layers kept in FP32 that pass the gate, found automatically when plain PTQ fails. The same plan
  builds the TensorRT Q/DQ ONNX and the CPU variants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgeskd.errors import AccuracyGateError, UsageError
from edgeskd.meta import ModelMeta


def check_recovery_options(budget_s: float, max_fp32_layers: int | None) -> None:
    if not budget_s > 0:
        raise UsageError(f"--recovery-budget {budget_s:g} must be > 0 seconds")
    if max_fp32_layers is not None and max_fp32_layers < 0:
        raise UsageError(f"--max-fp32-layers {max_fp32_layers} must be >= 0")


def qdq_source(onnx_path: Path, precision: str) -> bool:
    """True if ``onnx_path`` is a Q/DQ INT8 ONNX (has Q/DQ nodes); a one-line error when it is one
    and ``precision`` is not int8."""
    from edgeskd.quantize.qdq_source import has_qdq_nodes

    if not onnx_path.is_file() or not has_qdq_nodes(onnx_path):
        return False
    if precision != "int8":
        raise UsageError(f"{onnx_path} is a Q/DQ INT8 ONNX (QuantizeLinear/DequantizeLinear nodes); it builds only "
                         f"with --precision int8 — for {precision}, give the FP32 ONNX from `edgeskd export`")
    return True


def int8_plan(onnx_path: Path, meta: ModelMeta, val, calib: Any, *, calib_method: str, cache_for: Callable[[str], Path],
              max_f1_drop: float, recovery: bool, budget_s: float, max_fp32_layers: int | None,
              threads: int | None, force: bool, backend: str, data: str | Path | None,
              log: Callable[[str], None] = lambda s: None):
    """The plan (``quantize.recovery.Int8Plan``). When even recovery cannot pass: with ``force`` the
    closest plan is built; for TensorRT the build stops here (the engine would fail its gate) with
    the ``edgeskd qat`` command; the CPU build goes on with plain PTQ (its U8S8 variant may pass)."""
    from edgeskd.quantize.recovery import plan_int8, ptq_failed_message

    log(f"INT8 plan: {calib_method} calibration" + (", PTQ recovery if it fails the gate" if recovery else ""))
    plan = plan_int8(onnx_path, meta, val, calib=calib, cache_for=cache_for, method=calib_method,
                     max_f1_drop=max_f1_drop, recovery=recovery, budget_s=budget_s, max_fp32_layers=max_fp32_layers,
                     threads=threads, log=log)
    for line in plan.summary():
        log(line)
    if not plan.passed and not force and backend == "tensorrt":
        raise AccuracyGateError(ptq_failed_message(plan, onnx_path, meta, max_f1_drop, data))
    return plan


def applied(plan, calib_method: str, force: bool) -> tuple[str, list[str]]:
    """(calibration method, FP32 layers) the builders use: the plan's when it passed (or ``force``),
    else plain PTQ with the method asked for."""
    if plan is None or not (plan.passed or force):
        return calib_method, []
    return plan.method, list(plan.fp32_nodes)


def explain_failure(plan, onnx_path: Path, meta: ModelMeta, max_f1_drop: float,
                    data: str | Path | None) -> AccuracyGateError | None:
    """The error naming the ``edgeskd qat`` command, for a gate failure after a failed plan."""
    from edgeskd.quantize.recovery import ptq_failed_message

    if plan is None or plan.passed:
        return None
    return AccuracyGateError(ptq_failed_message(plan, onnx_path, meta, max_f1_drop, data))


def record(report, plan) -> None:
    """The plan in the build report: what was tried, the layers kept in FP32 and what each cost."""
    if plan is None:
        return
    report.int8_plan = {**plan.to_dict(), "summary": plan.summary()}
    if not plan.passed:
        report.warnings.append("--force: PTQ recovery found no plan within the gate; built the closest one"
                               if plan.recovery else "--force: plain PTQ failed the gate (recovery off); built it")
