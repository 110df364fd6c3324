"""PTQ recovery: when the INT8 model fails the accuracy gate, find the smallest change that passes.

``plan_int8`` tries, within one time budget:

1. the calibration method asked for, every layer INT8;
2. the same method with the fewest most-sensitive layers kept in FP32
   (``sensitivity.search_fp32_fallback``);
3. the other calibration methods, each the same way.

A full-INT8 pass ends the search at once. Otherwise the passing plan with the fewest FP32 layers wins
(ties: fewer FP32 weights, then the higher F1, then the order above). At most ``max_fp32_layers``
layers may stay in FP32 (default: a quarter of the quantized layers, at least one): past that the
model is no longer INT8 in any useful sense, and quantization-aware distillation (``edgeskd qat``) is
the next step — ``qat_command`` writes the exact command.

Plans are judged on the S8S8 Q/DQ model (the TensorRT input) in ONNX Runtime on the validation split;
the chosen method and FP32 layer list then build every INT8 artifact (the TensorRT Q/DQ ONNX and the
CPU variants), so both keep the same layers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgeskd.meta import ModelMeta
from edgeskd.quantize.sensitivity import FallbackResult, search_fp32_fallback

DEFAULT_BUDGET_S = 600.0
MAX_FP32_SHARE = 0.25      # default cap: this share of the quantized layers may stay FP32


def default_max_fp32_layers(n_layers: int) -> int:
    return max(1, math.ceil(MAX_FP32_SHARE * n_layers))


@dataclass
class Int8Plan:
    """How the INT8 artifacts are built: the calibration method and the layers kept in FP32, with
    what the search tried (``searches``, one per calibration method) and the model sizes."""

    method: str
    fp32_nodes: list[str]
    passed: bool
    fp32_f1: float
    f1: float                      # S8S8 Q/DQ on validation, in ONNX Runtime (percent)
    f1_drop: float
    requested_method: str
    recovered: bool = False        # the plan differs from plain PTQ with the requested method
    recovery: bool = True          # recovery was allowed to run (build-engine --no-recovery: False)
    searches: list[FallbackResult] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""
    max_fp32_layers: int = 0
    sizes: dict[str, int] = field(default_factory=dict)   # bytes: fp32, int8 (all layers), planned

    @property
    def chosen(self) -> FallbackResult | None:
        return next((s for s in self.searches if s.method == self.method), None)

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "method": self.method, "requested_method": self.requested_method, "fp32_nodes": list(self.fp32_nodes),
            "passed": self.passed, "recovered": self.recovered, "recovery": self.recovery, "fp32_f1": self.fp32_f1, "f1": self.f1,
            "f1_drop": self.f1_drop, "seconds": self.seconds, "stopped": self.stopped,
            "max_fp32_layers": self.max_fp32_layers, "sizes": dict(self.sizes),
            "layer_costs": [c.to_dict() for c in chosen.layer_costs] if chosen else [],
            "searches": [s.to_dict() for s in self.searches],
        }

    def summary(self) -> list[str]:
        """Lines for the build log and report: what was tried, what stayed FP32 and what it cost."""
        first = self.searches[0].full_int8 if self.searches else None
        lines = []
        if first is not None and not self.recovered:
            verdict = ("no recovery needed" if first.passed else
                       "failed the gate; recovery off (--no-recovery)" if not self.recovery else
                       "failed the gate; recovery found no plan")
            lines.append(f"INT8 ({self.method}, all layers): F1 {first.f1:.2f} (drop {first.f1_drop:+.2f}) — {verdict}")
            return lines + self._size_lines()
        if first is not None:
            lines.append(f"INT8 ({self.requested_method}, all layers) F1 {first.f1:.2f} (drop {first.f1_drop:+.2f}) "
                         f"failed the gate; PTQ recovery ran {self.seconds:.0f} s"
                         + (f" ({self.stopped})" if self.stopped else ""))
        for s in self.searches:
            full = s.full_int8
            lines.append(f"  {s.method}: all INT8 F1 {full.f1:.2f}" if full else f"  {s.method}: not reached")
            if full is not None and not full.passed:
                lines[-1] += (f"; {len(s.fp32_nodes)} FP32 layer(s) → F1 {s.f1:.2f} (drop {s.f1_drop:+.2f}) "
                              + ("pass" if s.passed else "fail") + f" [{s.seconds:.0f} s]")
        verdict = "kept" if self.passed else "closest"
        lines.append(f"{verdict}: {self.method} calibration, FP32 layers {self.fp32_nodes or 'none'}: "
                     f"F1 {self.f1:.2f} (drop {self.f1_drop:+.2f})")
        chosen = self.chosen
        for c in chosen.layer_costs if chosen else []:
            lines.append(f"  FP32 {c.node} ({c.op_type}, {c.weights:,} weights): +{c.extra_bytes / 1e3:.1f} kB, "
                         f"saves {c.f1_saved:+.2f} F1 pts")
        return lines + self._size_lines()

    def _size_lines(self) -> list[str]:
        s = self.sizes
        if not s.get("fp32") or not s.get("int8"):
            return []
        out = f"size: FP32 {s['fp32'] / 1e3:.0f} kB, all-INT8 Q/DQ {s['int8'] / 1e3:.0f} kB ({s['int8'] / s['fp32']:.0%})"
        if s.get("planned") and self.fp32_nodes:
            out += f", with {len(self.fp32_nodes)} FP32 layer(s) {s['planned'] / 1e3:.0f} kB ({s['planned'] / s['fp32']:.0%})"
        return [out]


def plan_int8(
    fp32_path: str | Path,
    meta: ModelMeta,
    val,
    *,
    calib: Any,
    cache_for: Callable[[str], Path],
    method: str = "minmax",
    max_f1_drop: float = 1.0,
    recovery: bool = True,
    budget_s: float = DEFAULT_BUDGET_S,
    max_fp32_layers: int | None = None,
    methods: Sequence[str] | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Int8Plan:
    """The INT8 build plan for ``fp32_path`` (see the module docstring). ``cache_for(method)`` is
    the calibration cache of a method; ``recovery=False`` only gates plain PTQ with ``method``."""
    from edgeskd.quantize.qdq import CALIB_METHODS
    from edgeskd.quantize.sensitivity import candidate_layers, named_model

    t0 = time.monotonic()
    n_layers = len(candidate_layers(named_model(fp32_path)))
    cap = default_max_fp32_layers(n_layers) if max_fp32_layers is None else int(max_fp32_layers)
    order = [method] + [m for m in (methods or CALIB_METHODS) if m != method]
    searches: list[FallbackResult] = []
    stopped = ""
    for i, m in enumerate(order if recovery else order[:1]):
        left = budget_s - (time.monotonic() - t0)
        if left <= 0:
            stopped = f"time budget {budget_s:g} s; not tried: {', '.join(order[i:])}"
            break
        res = search_fp32_fallback(fp32_path, meta, val, cache=cache_for(m), calib=calib, method=m, variant="s8s8",
                                   max_f1_drop=max_f1_drop, time_budget_s=left if recovery else 1e9,
                                   max_fp32_layers=cap if recovery else 0, threads=threads, log=log)
        searches.append(res)
        if res.passed and not res.fp32_nodes:
            break                                   # all layers INT8: nothing can beat it
        if res.stopped and not stopped:
            stopped = f"{m}: {res.stopped}"
    plan = _choose(searches, method, cap)
    plan.seconds, plan.stopped, plan.recovery = round(time.monotonic() - t0, 2), stopped, recovery
    plan.sizes = _sizes(fp32_path, plan)
    return plan


def _choose(searches: list[FallbackResult], requested: str, cap: int) -> Int8Plan:
    passing = [s for s in searches if s.passed]
    pool = passing or [s for s in searches if s.trials]
    best = min(pool, key=lambda s: (len(s.fp32_nodes) if s.passed else 0, _weights(s),
                                    -s.f1 if s.passed else s.f1_drop, searches.index(s)))
    plan = Int8Plan(best.method, list(best.fp32_nodes), best.passed, best.fp32_f1, best.f1, best.f1_drop,
                    requested, searches=searches, max_fp32_layers=cap)
    plan.recovered = bool(best.fp32_nodes) or best.method != requested
    return plan


def _weights(s: FallbackResult) -> int:
    w = {r.node: r.weights for r in s.ranking}
    return sum(w.get(n, 0) for n in s.fp32_nodes)


def _sizes(fp32_path: str | Path, plan: Int8Plan) -> dict[str, int]:
    out = {"fp32": Path(fp32_path).stat().st_size}
    full = next((s.full_int8 for s in plan.searches if s.method == plan.method and s.full_int8), None)
    if full is not None and full.size_bytes:
        out["int8"] = full.size_bytes
    chosen = plan.chosen
    t = chosen.trial_of(plan.fp32_nodes) if chosen else None
    if t is not None and t.size_bytes:
        out["planned"] = t.size_bytes
    return out


# -- the next step when PTQ cannot pass ------------------------------------------------------------
def qat_command(onnx_path: str | Path, meta: ModelMeta, data: str | Path | None = None) -> tuple[str, Path, bool]:
    """(the ``edgeskd qat`` command for the student behind ``onnx_path``, its output, whether the
    checkpoint is known). The checkpoint comes from the ONNX's metadata (``edgeskd export`` records
    it); a placeholder stands in where it is not recorded or no longer there."""
    onnx_path = Path(onnx_path)
    ckpt = (meta.extra or {}).get("checkpoint")
    known = bool(ckpt) and Path(str(ckpt)).is_file()
    stem = onnx_path.name.removesuffix(".onnx")
    out = onnx_path.with_name(f"{stem}.qat.onnx")
    cmd = f"edgeskd qat {ckpt if known else 'STUDENT.pt'}" + (f" --data {data}" if data else "") + f" --out {out}"
    return cmd, out, known


def ptq_failed_message(plan: Int8Plan, onnx_path: str | Path, meta: ModelMeta, max_f1_drop: float,
                       data: str | Path | None = None) -> str:
    """One line: the closest PTQ result, that nothing was written, and the exact QAT commands."""
    cmd, out, known = qat_command(onnx_path, meta, data)
    tried = ", ".join(s.method for s in plan.searches) or plan.requested_method
    layers = f"{len(plan.fp32_nodes)} FP32 layer(s)" if plan.fp32_nodes else "all layers INT8"
    return (f"INT8 F1 {plan.f1:.2f} vs FP32 {plan.fp32_f1:.2f} on the validation split: drop {plan.f1_drop:.2f} pts > "
            f"--max-f1-drop {max_f1_drop:g} "
            + (f"even after PTQ recovery (closest: {plan.method} calibration, {layers}, at most "
               f"{plan.max_fp32_layers} FP32; calibrations tried: {tried}" + (f"; {plan.stopped}" if plan.stopped else "")
               + ")" if plan.recovery else f"({plan.method} calibration; PTQ recovery off: --no-recovery)")
            + f"; nothing written — next, quantization-aware distillation: `{cmd}` then "
            f"`edgeskd build-engine {out}`"
            + ("" if known else " (STUDENT.pt: the student checkpoint this ONNX was exported from)")
            + "; or pass --force to keep the closest INT8 model")
