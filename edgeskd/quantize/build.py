"""``build-engine``: FP32 ONNX → the artifact for a backend and precision, behind an accuracy gate.

* onnxruntime (CPU): for INT8, build the TensorRT-compatible S8S8 Q/DQ ONNX (kept as
  ``<name>.int8.qdq.onnx``) and the CPU variants (U8S8 Q/DQ; FP32 with ORT graph optimizations saved),
  time each here with the same threads, gate each against FP32 on the validation split, and keep the
  fastest that passes as the CPU artifact. What was tried and why the winner won is in the report.
* tensorrt (GPU): the engine from the Q/DQ ONNX (INT8), the FP32 ONNX (FP32) or FP16 (flag / FP16
  ONNX), gated on the validation split with the TensorRT runner.

A failed gate raises AccuracyGateError and leaves no artifact, unless ``force``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.errors import AccuracyGateError, BackendUnavailable, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.runtime.timing import latency_and_throughput

PRECISIONS = ("int8", "fp16", "fp32")
BACKENDS = ("auto", "tensorrt", "onnxruntime")


@dataclass
class Candidate:
    name: str
    precision: str
    description: str
    size_bytes: int = 0
    p50_ms: float = float("nan")       # batch 1
    p99_ms: float = float("nan")
    throughput: float = float("nan")   # images/s at the throughput batch
    f1: float = float("nan")
    f1_drop: float = float("nan")      # points vs FP32 ONNX
    passed: bool = False
    note: str = ""
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildReport:
    backend: str
    precision: str
    artifact: Path
    fp32_f1: float
    candidates: list[Candidate] = field(default_factory=list)
    winner: str = ""
    reason: str = ""
    extra_artifacts: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibration: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "artifact": str(self.artifact),
                "fp32_f1": self.fp32_f1, "winner": self.winner, "reason": self.reason,
                "candidates": [c.to_dict() for c in self.candidates],
                "extra_artifacts": [str(p) for p in self.extra_artifacts], "warnings": self.warnings,
                "calibration": self.calibration}


def tensorrt_usable() -> tuple[bool, str]:
    """(usable, why not) — tensorrt importable and a CUDA device present."""
    try:
        from edgeskd.runtime.tensorrt_runner import import_tensorrt

        import_tensorrt()
        from edgeskd.runtime.cuda_binding import get_binding

        get_binding()
    except BackendUnavailable as e:
        return False, str(e)
    return True, ""


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} must be one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        return backend
    ok, why = tensorrt_usable()
    if backend == "tensorrt":
        if not ok:
            raise BackendUnavailable(f"--backend tensorrt: {why}")
        return backend
    return "tensorrt" if ok else "onnxruntime"


def _f1_percent(runner, val, batch_size: int = 64) -> float:
    from edgeskd.metrics import as_percent
    from edgeskd.runtime.evaluate import evaluate_runner

    return float(as_percent(evaluate_runner(runner, val, batch_size=batch_size))["f1"])


# Batch-1 medians closer than this are a tie: timing noise on a shared CPU is a few percent, so
# speed alone would pick between equals at random; a tie goes to the better F1, then the smaller file.
LATENCY_TIE = 0.05


def pick_winner(pool: list[Candidate]) -> tuple[Candidate, Candidate]:
    """(winner, fastest) among the candidates allowed to win."""
    fastest = min(pool, key=lambda c: c.p50_ms)
    tied = [c for c in pool if c.p50_ms <= fastest.p50_ms * (1 + LATENCY_TIE)]
    winner = min(tied, key=lambda c: (-c.f1, c.size_bytes, c.p50_ms))
    return winner, fastest


def gate(name: str, f1_fp32: float, f1_q: float, max_drop: float) -> tuple[bool, float]:
    drop = round(f1_fp32 - f1_q, 4)
    return drop <= max_drop, drop


def _fail_message(c: Candidate, fp32_f1: float, max_drop: float) -> str:
    return (f"{c.name} F1 {c.f1:.2f} vs FP32 {fp32_f1:.2f} on the validation split: drop {c.f1_drop:.2f} pts > "
            f"--max-f1-drop {max_drop:g}; nothing written — calibrate on more representative --calib-data, try "
            "--calib-method percentile, or pass --force to keep it anyway")


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
    log: Callable[[str], None] = lambda s: None,
) -> BuildReport:
    """The CPU artifact. ``val``: LabeledSet for the gate; ``calib``: CalibrationSet (run only when
    ``cache`` does not exist yet). ``out=None``: ``<stem>.<winner's precision>.cpu.onnx`` next to the
    ONNX (an INT8 request can be won by the optimized FP32 model where INT8 is slower here)."""
    if variants is None:
        variants = {"int8": ("s8s8", "u8s8", "fp32-opt"), "fp16": (), "fp32": ("fp32-opt",)}[precision]
    import onnx

    from edgeskd.quantize.qdq import VARIANTS, quantize_qdq
    from edgeskd.runtime.evaluate import evaluate_runner
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner, session_options

    ref = OnnxRuntimeRunner(fp32_path, threads=threads)
    fp32_f1 = _f1_percent(ref, val)
    fp32_size = fp32_path.stat().st_size
    log(f"FP32 ONNX F1 on {len(val)} validation images: {fp32_f1:.2f}")
    report = BuildReport("onnxruntime", precision, out or fp32_path, fp32_f1)
    tmp = Path(tempfile.mkdtemp(prefix="edgeskd-build-"))
    try:
        cands: list[Candidate] = []
        paths: dict[str, Path] = {}
        if precision == "int8":
            _note_calibration(report, calib, cache)
            log(f"calibration: {report.calibration}")
            for v in [v for v in variants if v in VARIANTS]:
                p = tmp / f"{v}.onnx"
                quantize_qdq(fp32_path, p, meta, calib=calib, cache=cache, variant=v, method=calib_method,
                             weight_qdq_pair=weight_qdq_pair)
                paths[v] = p
                cands.append(Candidate(v, "int8", VARIANTS[v].description))
        elif precision == "fp16":
            from edgeskd.export.tensorrt_build import fp16_onnx_bytes

            p = tmp / "fp16.onnx"
            m16 = onnx.load_from_string(fp16_onnx_bytes(fp32_path))
            from edgeskd.export.onnx_export import attach_metadata

            attach_metadata(m16, meta.replace(precision="fp16"))
            onnx.save(m16, str(p))
            paths["fp16"] = p
            cands.append(Candidate("fp16", "fp16", "FP16 ONNX (float32 I/O)"))
        if "fp32-opt" in variants:
            p = tmp / "fp32-opt.onnx"
            import onnxruntime as ort

            ort.InferenceSession(str(fp32_path), sess_options=session_options(
                threads, optimization="extended", optimized_model_path=p), providers=["CPUExecutionProvider"])
            # the saved graph keeps the model's metadata_props; mark it as produced here
            m = onnx.load(str(p))
            from edgeskd.export.onnx_export import attach_metadata

            attach_metadata(m, meta.replace(extra={**meta.extra, "ort_optimized": "extended"}))
            onnx.save(m, str(p))
            paths["fp32-opt"] = p
            cands.append(Candidate("fp32-opt", "fp32", "FP32 with ONNX Runtime graph optimizations saved"))

        # F1 of each, then latency in interleaved rounds (median per artifact), so a burst of load
        # on a shared machine does not decide the winner.
        ref_c = Candidate("fp32", "fp32", "exported FP32 ONNX (reference)", fp32_size, f1=fp32_f1, f1_drop=0.0,
                          passed=True, note="reference", path=str(fp32_path))
        runners = {"fp32": ref}
        for c in cands:
            p = paths[c.name]
            runners[c.name] = OnnxRuntimeRunner(p, threads=threads)
            c.f1 = _f1_percent(runners[c.name], val)
            c.passed, c.f1_drop = gate(c.name, fp32_f1, c.f1, max_f1_drop)
            c.size_bytes = p.stat().st_size
            c.path = str(p)
        times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runners}
        for _ in range(max(1, rounds)):
            for k, r in runners.items():
                times[k].append(latency_and_throughput(r, seconds=time_seconds))
        for c in [ref_c, *cands]:
            t = np.asarray(times[c.name])
            c.p50_ms, c.p99_ms, c.throughput = (float(v) for v in np.median(t, axis=0))
        report.candidates.append(ref_c)
        for c in cands:
            log(f"  {c.name:9s} F1 {c.f1:6.2f} (drop {c.f1_drop:+.2f})  p50 {c.p50_ms:.3f} ms  p99 {c.p99_ms:.3f} ms  "
                f"{c.throughput:.0f} img/s  {c.size_bytes / 1e3:.0f} kB  {'pass' if c.passed else 'FAIL gate'}")
            report.candidates.append(c)

        # Precision asked for: its candidates first; FP32-opt competes only for int8 (fastest wins).
        pool = [c for c in cands if c.passed]
        asked = [c for c in cands if c.precision == precision]
        if precision != "fp32" and not any(c.passed for c in asked):
            best = min(asked, key=lambda c: c.f1_drop)
            if not force:
                raise AccuracyGateError(_fail_message(best, fp32_f1, max_f1_drop))
            pool = [best]   # --force: keep the best-F1 one of the precision asked for
            report.warnings.append(f"--force: keeping {best.name} although it fails the accuracy gate")
        winner, fastest = pick_winner(pool)
        others = sorted((c for c in cands if c is not winner), key=lambda c: c.p50_ms)
        faster_failed = [c for c in cands if not c.passed and c.p50_ms < winner.p50_ms]
        report.winner = winner.name
        rest = ", ".join(f"{c.name} {c.p50_ms:.3f}" for c in others)
        why = ("has the lowest batch-1 median latency" if winner is fastest else
               f"is within {LATENCY_TIE:.0%} of the lowest batch-1 median latency (a tie at this timing's noise) "
               f"with the best F1 of the tied ({winner.f1:.2f} vs {fastest.name} {fastest.f1:.2f}"
               + (", and the smaller file" if winner.f1 == fastest.f1 else "") + ";")
        report.reason = (
            f"{winner.name} {why} ({winner.p50_ms:.3f} ms"
            + (f"; {rest}" if rest else "")
            + f") among the built artifacts within {max_f1_drop:g} F1 pts of FP32 (median of {max(1, rounds)} "
            f"interleaved timing rounds, {threads or 'default'} threads; exported FP32 ONNX: {ref_c.p50_ms:.3f} ms)"
            + (f"; faster but failed the gate: {', '.join(c.name for c in faster_failed)}" if faster_failed else "")
        )
        if not winner.passed:
            report.reason = f"--force: kept {winner.name} (best F1 of the {precision} variants) although it fails the gate"
        if winner.precision != precision:
            report.reason += f" (the {precision} variants were slower or less accurate on this CPU)"
        if out is None:
            out = default_outputs(fp32_path, "onnxruntime", winner.precision)[0]
        _place(paths[winner.name], out)
        # The S8S8 Q/DQ (TensorRT's input) is an artifact of its own when it passes (or --force);
        # placed after the main artifact, so a failure to write that one leaves neither.
        kept: dict[str, str] = {}
        s8 = next((c for c in cands if c.name == "s8s8"), None)
        if s8 is not None and qdq_out is not None and (s8.passed or force):
            _place(paths["s8s8"], qdq_out)
            report.extra_artifacts.append(qdq_out)
            kept["s8s8"] = str(qdq_out)
        kept[winner.name] = str(out)
        for c in cands:   # the others were temporary files (removed below): no path in the report
            c.path = kept.get(c.name, "")
        report.artifact = out
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _note_calibration(report: BuildReport, calib: Any, cache: Path) -> None:
    """Where the INT8 ranges come from. The cache is keyed by the calibration set, so cached ranges
    were computed on these same images: their warnings (too few images) hold for a rebuild too."""
    report.warnings += calib.warnings
    if cache.is_file():
        report.calibration = f"cached ranges {cache} from {calib.source} (no recalibration)"
    else:
        report.calibration = f"{calib.source} → {cache}"


def _place(src: Path, dst: Path) -> None:
    from edgeskd.utils.io import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def build_tensorrt(
    fp32_path: Path,
    meta: ModelMeta,
    *,
    precision: str,
    out: Path,
    val,
    calib: Any,
    cache: Path,
    qdq_out: Path,
    max_f1_drop: float = 1.0,
    force: bool = False,
    calib_method: str = "minmax",
    weight_qdq_pair: bool = False,
    max_batch: int = 8,
    workspace_gib: float = 1.0,
    timing_cache: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> BuildReport:
    from edgeskd.export.tensorrt_build import build_tensorrt_engine
    from edgeskd.quantize.qdq import inspect_qdq, quantize_qdq
    from edgeskd.runtime.evaluate import evaluate_runner
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner
    from edgeskd.runtime.tensorrt_runner import TensorRTRunner
    from edgeskd.utils.io import atomic_path

    fp32_f1 = _f1_percent(OnnxRuntimeRunner(fp32_path), val)
    report = BuildReport("tensorrt", precision, out, fp32_f1)
    src = fp32_path
    qdq_existed = qdq_out.exists()
    try:
        if precision == "int8":
            _note_calibration(report, calib, cache)
            quantize_qdq(fp32_path, qdq_out, meta, calib=calib, cache=cache, variant="s8s8", method=calib_method,
                         weight_qdq_pair=weight_qdq_pair)
            problems = inspect_qdq(qdq_out).problems()
            if problems:
                qdq_out.unlink(missing_ok=True)
                raise UsageError(f"the Q/DQ ONNX does not fit TensorRT: {'; '.join(problems)}")
            src = qdq_out
            report.extra_artifacts.append(qdq_out)
        with atomic_path(out) as tmp_engine:
            build_tensorrt_engine(src, tmp_engine, precision=precision, max_batch=max_batch, workspace_gib=workspace_gib,
                                  timing_cache=timing_cache, rebuild_from=fp32_path)
            with TensorRTRunner(tmp_engine) as r:
                f1 = _f1_percent(r, val, batch_size=max_batch)
                p50, p99, tp = latency_and_throughput(r, batch=max_batch)
            ok, drop = gate(precision, fp32_f1, f1, max_f1_drop)
            c = Candidate(f"tensorrt-{precision}", precision, "TensorRT engine", tmp_engine.stat().st_size, p50, p99, tp,
                          f1, drop, ok, "", str(out))
            report.candidates.append(c)
            log(f"  {c.name} F1 {f1:.2f} (drop {drop:+.2f}) p50 {p50:.3f} ms")
            if not ok and not force:
                if precision == "int8":
                    qdq_out.unlink(missing_ok=True)
                raise AccuracyGateError(_fail_message(c, fp32_f1, max_f1_drop))
    except BaseException:
        if precision == "int8" and not qdq_existed:
            qdq_out.unlink(missing_ok=True)
        raise
    report.winner = c.name
    report.reason = "the only TensorRT artifact built"
    return report


def default_outputs(onnx_path: Path, backend: str, precision: str, engines_dir: Path | None = None
                    ) -> tuple[Path, Path]:
    """(artifact, Q/DQ ONNX) default paths next to the ONNX (or in ``engines_dir``)."""
    d = engines_dir or onnx_path.parent
    stem = onnx_path.name[: -len(".onnx")] if onnx_path.name.endswith(".onnx") else onnx_path.stem
    art = d / (f"{stem}.{precision}.engine" if backend == "tensorrt" else f"{stem}.{precision}.cpu.onnx")
    return art, d / f"{stem}.int8.qdq.onnx"


def build_engine(
    onnx_path: str | Path,
    *,
    precision: str = "int8",
    backend: str = "auto",
    out: str | Path | None = None,
    data: str | Path | None = None,
    dataset: Any = None,
    calib_data: str | Path | None = None,
    calib_dataset: Any = None,
    calib_size: int = 512,
    calib_seed: int = 0,
    calib_method: str = "minmax",
    calib_dir: str | Path = "calibration",
    max_f1_drop: float = 1.0,
    force: bool = False,
    workspace_gib: float = 1.0,
    max_batch: int = 8,
    threads: int | None = None,
    weight_qdq_pair: bool = False,
    meta_overrides: dict[str, Any] | None = None,
    time_seconds: float = 2.0,
    log: Callable[[str], None] = lambda s: None,
) -> BuildReport:
    """FP32 ONNX → gated artifact for ``backend`` (see module docstring).

    Validation data (the gate): ``dataset`` / ``data`` / the training data recorded in the ONNX.
    Calibration data: ``calib_dataset`` / ``calib_data`` / the training split of the same data.
    """
    from edgeskd.errors import ArtifactError, DataError
    from edgeskd.data.artifact_data import align_classes, load_data
    from edgeskd.quantize.calibration import cache_path, select_calibration
    from edgeskd.quantize.qdq import CALIB_METHODS
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner
    from edgeskd.utils.io import check_output_file

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    if calib_method not in CALIB_METHODS:
        raise UsageError(f"--calib-method {calib_method!r} must be one of {', '.join(CALIB_METHODS)}")
    if max_f1_drop < 0:
        raise UsageError(f"--max-f1-drop {max_f1_drop} must be >= 0")
    if max_batch < 1 or workspace_gib <= 0:
        raise UsageError("--max-batch must be >= 1 and --workspace > 0")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} does not exist; export one with `edgeskd export CHECKPOINT`")
    meta = OnnxRuntimeRunner(onnx_path, meta_overrides=meta_overrides).meta
    if meta.precision != "fp32":
        raise UsageError(f"{onnx_path} is already {meta.precision}; give the FP32 ONNX from `edgeskd export`")
    backend = resolve_backend(backend)
    if precision == "int8":
        from edgeskd.quantize.qdq import check_quantizer_version

        check_quantizer_version()
    art, qdq_out = default_outputs(onnx_path, backend, precision)
    art = Path(out) if out is not None else art
    if out is not None and Path(out).resolve() == onnx_path.resolve():
        raise UsageError(f"--out {out} would overwrite the source ONNX; choose another path")
    if backend == "onnxruntime" and art.suffix != ".onnx":
        raise UsageError(f"--out {art}: the onnxruntime artifact is an .onnx file")
    if backend == "tensorrt" and art.suffix not in (".engine", ".plan", ".trt"):
        raise UsageError(f"--out {art}: a TensorRT engine file ends in .engine")
    check_output_file(art)
    check_output_file(qdq_out)

    ls = dataset if dataset is not None else load_data(meta.extra.get("data"), path=data)
    ls = align_classes(ls, meta)
    val = ls.split("val")
    if len(val) == 0:
        raise DataError(f"data set {ls.name} has no validation split for the accuracy gate; give --data with a val split")
    calib = cache = None
    if precision == "int8":
        cls = calib_dataset if calib_dataset is not None else (
            load_data(path=calib_data) if calib_data is not None else ls)
        if cls is not ls:
            cls = align_classes(cls, meta)
        calib = select_calibration(cls, meta, size=calib_size, seed=calib_seed,
                                   batch_size=min(32, max(1, calib_size)),
                                   split="train", source=str(calib_data) if calib_data else "")
        stem = onnx_path.name.removesuffix(".onnx")
        cache = cache_path(onnx_path.read_bytes(), calib, calib_method, directory=calib_dir, stem=stem)
    common = dict(precision=precision, val=val, calib=calib, cache=cache, max_f1_drop=max_f1_drop,
                  force=force, calib_method=calib_method, weight_qdq_pair=weight_qdq_pair, log=log)
    if backend == "tensorrt":
        rep = build_tensorrt(onnx_path, meta, out=art, qdq_out=qdq_out, max_batch=max_batch, workspace_gib=workspace_gib,
                             timing_cache=Path(calib_dir) / "trt-timing.cache", **common)
    else:
        rep = build_onnxruntime(onnx_path, meta, out=Path(out) if out is not None else None,
                                qdq_out=qdq_out if precision == "int8" else None, threads=threads,
                                time_seconds=time_seconds, **common)
    from edgeskd.utils.io import write_json_atomic

    art = Path(rep.artifact)
    write_json_atomic(art.with_name(art.name + ".json"), rep.to_dict())
    return rep
