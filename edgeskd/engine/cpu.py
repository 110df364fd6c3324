"""The CPU artifact (ONNX Runtime): build the variants of the precision asked for, score each on the
validation split, time them here with the same threads, keep the fastest that passes the gate.

For INT8 the variants are the TensorRT-compatible S8S8 Q/DQ ONNX (also kept as
``<name>.int8.qdq.onnx``), U8S8 Q/DQ, and FP32 with ONNX Runtime's graph optimizations saved: on a
CPU without VNNI, INT8 is not always faster than FP32, so the choice is measured, not assumed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.engine.report import (LATENCY_TIE, BuildReport, Candidate, add_clinical, clinical_summary,
                                   default_outputs, fail_message, gate, note_calibration, pick_winner, scores,
                                   subclass_counts)
from edgeskd.errors import AccuracyGateError
from edgeskd.meta import ModelMeta
from edgeskd.runtime.onnxrt import OnnxRuntimeRunner
from edgeskd.runtime.timing import latency_and_throughput
from edgeskd.utils.io import atomic_path

DEFAULT_VARIANTS = {"int8": ("s8s8", "u8s8", "fp32-opt"), "fp16": (), "fp32": ("fp32-opt",)}


def build_onnxruntime(
    fp32_path: Path,
    meta: ModelMeta,
    *,
    precision: str,
    out: Path | None,
    val,
    calib: Any,
    cache: Path,
    qdq_out: Path | None,
    max_f1_drop: float = 1.0,
    force: bool = False,
    threads: int | None = None,
    calib_method: str = "minmax",
    weight_qdq_pair: bool = False,
    variants: tuple[str, ...] | None = None,
    time_seconds: float = 2.0,
    rounds: int = 3,
    fp32_nodes: tuple[str, ...] | list[str] = (),
    reference: Any = None,
    log: Callable[[str], None] = lambda s: None,
) -> BuildReport:
    """The CPU artifact. ``val``: LabeledSet for the gate; ``calib``: CalibrationSet (run only when
    ``cache`` does not exist yet). ``out=None``: ``<stem>.<winner's precision>.cpu.onnx`` next to the
    ONNX (an INT8 request can be won by the optimized FP32 model where INT8 is slower here).
    ``fp32_nodes``: layers every INT8 variant keeps in FP32 (PTQ recovery's plan). ``reference``
    (``quantize.qdq_source.Reference``): ``fp32_path`` is then a Q/DQ ONNX from ``edgeskd qat``,
    gated against the FP32 F1 it records, with no calibration."""
    variants = DEFAULT_VARIANTS[precision] if variants is None else variants
    tmp = Path(tempfile.mkdtemp(prefix="edgeskd-build-"))
    try:
        with contextlib.ExitStack() as active:
            ref, ref_c, fp32_clinical = reference_candidate(fp32_path, val, reference, threads, active)
            fp32_f1 = ref_c.f1
            log(f"FP32 F1 on {len(val)} validation images: {fp32_f1:.2f}"
                + (f" ({reference.source})" if reference is not None else ""))
            report = BuildReport("onnxruntime", precision, out or fp32_path, fp32_f1, fp32_clinical=fp32_clinical,
                                 fp32_per_subclass=dict(ref_c.per_subclass), subclass_counts=subclass_counts(val),
                                 source="qdq" if reference is not None else "fp32")
            add_clinical(ref_c, fp32_clinical, None, max_f1_drop, report.warnings)
            if reference is not None:
                cands = qdq_source_variants(fp32_path, meta, tmp, threads=threads)
                report.calibration = f"none: {fp32_path.name} carries its learned Q/DQ scales"
            else:
                if precision == "int8":
                    note_calibration(report, calib, cache)
                    log(f"calibration: {report.calibration}")
                cands = build_variants(fp32_path, meta, precision, variants, tmp, calib=calib, cache=cache,
                                       method=calib_method, weight_qdq_pair=weight_qdq_pair, threads=threads,
                                       fp32_nodes=fp32_nodes)
            runners = {c.name: active.enter_context(OnnxRuntimeRunner(c.path, threads=threads)) for c in cands}
            for c in cands:
                score(c, runners[c.name], val, fp32_f1, max_f1_drop, report)
            timed = [ref_c, *cands] if ref is not None else cands
            time_interleaved(timed, {"fp32": ref, **runners}, rounds=rounds, seconds=time_seconds)
        report.candidates = [ref_c, *cands]
        for c in cands:
            log(_summary(c))
        winner = choose(report, cands, ref_c, force=force, max_f1_drop=max_f1_drop,
                        timing=f"median of {max(1, rounds)} interleaved timing rounds, {threads or 'default'} threads")
        write_outputs(report, winner, cands, fp32_path=fp32_path, out=out, qdq_out=qdq_out, force=force)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the steps --------------------------------------------------------------------------------------
def reference_candidate(fp32_path: Path, val, reference: Any, threads: int | None,
                        active: contextlib.ExitStack) -> tuple[Any, Candidate, dict[str, Any]]:
    """(FP32 runner or None, the FP32 reference row, its clinical figures): the exported FP32 ONNX
    scored and timed here, or the FP32 figures a Q/DQ ONNX records (not timed: there is no FP32 model
    here, and no clinical figures to compare with)."""
    if reference is not None:
        return None, Candidate("fp32", "fp32", f"FP32 reference: {reference.source}", 0, f1=reference.f1,
                               f1_drop=0.0, passed=True, note="reference",
                               per_subclass=dict(reference.per_subclass)), {}
    ref = active.enter_context(OnnxRuntimeRunner(fp32_path, threads=threads))
    f1, per_sub, clinical = scores(ref, val)
    return ref, Candidate("fp32", "fp32", "exported FP32 ONNX (reference)", fp32_path.stat().st_size, f1=f1,
                          f1_drop=0.0, passed=True, note="reference", path=str(fp32_path),
                          per_subclass=per_sub), clinical


def qdq_source_variants(qdq_path: Path, meta: ModelMeta, tmp: Path, *, threads: int | None = None) -> list[Candidate]:
    """The candidates of a Q/DQ source: the model as given, and the same model with its Q/DQ removed
    (FP32 arithmetic with the learned weights; where INT8 is slower on this CPU, that one may win)."""
    from edgeskd.quantize.qdq_source import fp32_from_qdq

    given = tmp / "qat-s8s8.onnx"
    shutil.copyfile(qdq_path, given)
    plain = fp32_from_qdq(qdq_path, meta, tmp / "fp32-noqdq.onnx")
    return [Candidate("qat-s8s8", "int8", "the Q/DQ INT8 ONNX as given (TensorRT's S8S8 form)", path=str(given)),
            Candidate("fp32-noqdq", "fp32", "its weights in FP32, Q/DQ removed", path=str(plain))]


def build_variants(fp32_path: Path, meta: ModelMeta, precision: str, variants: tuple[str, ...], tmp: Path, *,
                   calib: Any, cache: Path, method: str, weight_qdq_pair: bool,
                   threads: int | None = None, fp32_nodes: tuple[str, ...] | list[str] = ()) -> list[Candidate]:
    """The candidate files (in ``tmp``) of ``precision``, plus FP32-optimized if in ``variants``;
    INT8 variants keep ``fp32_nodes`` in FP32."""
    from edgeskd.quantize.qdq import VARIANTS, quantize_qdq

    cands: list[Candidate] = []
    if precision == "int8":
        for v in [v for v in variants if v in VARIANTS]:
            p = quantize_qdq(fp32_path, tmp / f"{v}.onnx", meta, calib=calib, cache=cache, variant=v, method=method,
                             weight_qdq_pair=weight_qdq_pair, fp32_nodes=list(fp32_nodes))
            cands.append(Candidate(v, "int8", VARIANTS[v].description, path=str(p), fp32_layers=list(fp32_nodes)))
    elif precision == "fp16":
        cands.append(Candidate("fp16", "fp16", "FP16 ONNX (float32 I/O)",
                               path=str(fp16_onnx(fp32_path, meta, tmp / "fp16.onnx"))))
    if "fp32-opt" in variants:
        cands.append(Candidate("fp32-opt", "fp32", "FP32 with ONNX Runtime graph optimizations saved",
                               path=str(ort_optimized_onnx(fp32_path, meta, tmp / "fp32-opt.onnx", threads))))
    return cands


def fp16_onnx(fp32_path: Path, meta: ModelMeta, out: Path) -> Path:
    import onnx

    from edgeskd.export.onnx_export import attach_metadata
    from edgeskd.quantize.fp16 import fp16_onnx_bytes

    m16 = onnx.load_from_string(fp16_onnx_bytes(fp32_path))
    attach_metadata(m16, meta.replace(precision="fp16"))
    onnx.save(m16, str(out))
    return out


def ort_optimized_onnx(fp32_path: Path, meta: ModelMeta, out: Path, threads: int | None = None) -> Path:
    """The FP32 graph as ONNX Runtime optimizes it ("extended" level: still portable across CPUs)."""
    import onnx
    import onnxruntime as ort

    from edgeskd.export.onnx_export import attach_metadata
    from edgeskd.runtime.onnxrt import session_options

    ort.InferenceSession(str(fp32_path), sess_options=session_options(
        threads, optimization="extended", optimized_model_path=out), providers=["CPUExecutionProvider"])
    # the saved graph keeps the model's metadata_props; mark it as produced here
    m = onnx.load(str(out))
    attach_metadata(m, meta.replace(extra={**meta.extra, "ort_optimized": "extended"}))
    onnx.save(m, str(out))
    return out


def score(c: Candidate, runner, val, fp32_f1: float, max_f1_drop: float, report: BuildReport) -> None:
    """F1 and per-subclass accuracy on the validation split, the gate's verdict, the clinical figures
    (and their change from FP32: a warning in ``report`` beyond the allowance), and the file size."""
    c.f1, c.per_subclass, clinical = scores(runner, val)
    c.passed, c.f1_drop = gate(fp32_f1, c.f1, max_f1_drop)
    add_clinical(c, clinical, report.fp32_clinical, max_f1_drop, report.warnings)
    c.size_bytes = Path(c.path).stat().st_size


def time_interleaved(cands: list[Candidate], runners: dict[str, Any], *, rounds: int, seconds: float) -> None:
    """Latency in interleaved rounds, the median per artifact: a burst of load on a shared machine
    then hits every artifact, and does not decide the winner."""
    times: dict[str, list[tuple[float, float, float]]] = {c.name: [] for c in cands}
    for _ in range(max(1, rounds)):
        for c in cands:
            times[c.name].append(latency_and_throughput(runners[c.name], seconds=seconds))
    for c in cands:
        c.p50_ms, c.p99_ms, c.throughput = (float(v) for v in np.median(np.asarray(times[c.name]), axis=0))


def _summary(c: Candidate) -> str:
    return (f"  {c.name:9s} F1 {c.f1:6.2f} (drop {c.f1_drop:+.2f})  p50 {c.p50_ms:.3f} ms  p99 {c.p99_ms:.3f} ms  "
            f"{c.throughput:.0f} img/s  {c.size_bytes / 1e3:.0f} kB  {'pass' if c.passed else 'FAIL gate'}  "
            f"{clinical_summary(c)}")



def choose(report: BuildReport, cands: list[Candidate], ref_c: Candidate, *, force: bool, max_f1_drop: float,
           timing: str) -> Candidate:
    """The winner among the candidates that pass (``--force``: the best of the precision asked for
    when none of it passes); its name and the reason go into ``report``."""
    precision = report.precision
    pool = [c for c in cands if c.passed]
    asked = [c for c in cands if c.precision == precision]
    if precision != "fp32" and not any(c.passed for c in asked):
        best = min(asked, key=lambda c: c.f1_drop)
        if not force:
            raise AccuracyGateError(fail_message(best, report.fp32_f1, max_f1_drop))
        pool = [best]
        report.warnings.append(f"--force: keeping {best.name} although it fails the accuracy gate")
    winner, fastest = pick_winner(pool)
    report.winner = winner.name
    if not winner.passed:
        report.reason = f"--force: kept {winner.name} (best F1 of the {precision} variants) although it fails the gate"
    else:
        report.reason = _reason(winner, fastest, cands, ref_c, max_f1_drop, timing)
    if winner.precision != precision:
        report.reason += f" (the {precision} variants were slower or less accurate on this CPU)"
    return winner


def _reason(winner: Candidate, fastest: Candidate, cands: list[Candidate], ref_c: Candidate, max_f1_drop: float,
            timing: str) -> str:
    others = sorted((c for c in cands if c is not winner), key=lambda c: c.p50_ms)
    faster_failed = [c for c in cands if not c.passed and c.p50_ms < winner.p50_ms]
    rest = ", ".join(f"{c.name} {c.p50_ms:.3f}" for c in others)
    why = ("has the lowest batch-1 median latency" if winner is fastest else
           f"is within {LATENCY_TIE:.0%} of the lowest batch-1 median latency (a tie at this timing's noise) "
           f"with the best F1 of the tied ({winner.f1:.2f} vs {fastest.name} {fastest.f1:.2f}"
           + (", and the smaller file" if winner.f1 == fastest.f1 else "") + ";")
    return (
        f"{winner.name} {why} ({winner.p50_ms:.3f} ms"
        + (f"; {rest}" if rest else "")
        + f") among the built artifacts within {max_f1_drop:g} F1 pts of FP32 ({timing}"
        + (f"; exported FP32 ONNX: {ref_c.p50_ms:.3f} ms)" if ref_c.p50_ms == ref_c.p50_ms else ")")
        + (f"; faster but failed the gate: {', '.join(c.name for c in faster_failed)}" if faster_failed else "")
    )


def write_outputs(report: BuildReport, winner: Candidate, cands: list[Candidate], *, fp32_path: Path,
                  out: Path | None, qdq_out: Path | None, force: bool) -> None:
    """Place the winner at ``out`` (default next to the ONNX) and, when it passes (or ``force``), the
    S8S8 Q/DQ ONNX at ``qdq_out`` — after the main artifact, so a failure to write that one leaves
    neither. The other candidates were temporary files: no path in the report."""
    if out is None:
        out = default_outputs(fp32_path, "onnxruntime", winner.precision)[0]
    _place(Path(winner.path), out)
    kept: dict[str, str] = {}
    s8 = next((c for c in cands if c.name == "s8s8"), None)
    if s8 is not None and qdq_out is not None and (s8.passed or force):
        _place(Path(s8.path), qdq_out)
        report.extra_artifacts.append(qdq_out)
        kept["s8s8"] = str(qdq_out)
    kept[winner.name] = str(out)
    for c in cands:
        c.path = kept.get(c.name, "")
    report.artifact = out
    int8 = [c for c in cands if c.precision == "int8" and c.passed]
    if report.precision == "int8" and winner.precision != "int8" and int8:
        tensorrt_input = "s8s8" in kept and kept["s8s8"] != str(out)
        report.notes.append(
            f"the CPU artifact is {winner.precision.upper()} ({winner.name}): on this CPU it beat the INT8 variants "
            f"that passed the gate ({', '.join(c.name for c in int8)})"
            + (f"; the TensorRT input {kept['s8s8']} is INT8 (S8S8 Q/DQ) and passed the gate" if tensorrt_input else "")
            + (f"; the TensorRT input is the Q/DQ ONNX given ({fp32_path}), which passed the gate"
               if report.source == "qdq" else ""))


def _place(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
