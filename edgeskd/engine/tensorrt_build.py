"""Build a TensorRT engine from an ONNX (FP32, FP16, or Q/DQ INT8) — TensorRT 10.x and 11.x.

* INT8 is explicit quantization: the Q/DQ ONNX is parsed into a strongly typed network
  (TRT 10: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TRT 11: always strongly typed).
* FP16: TRT 10 builds the FP32 ONNX as a weakly typed network with ``BuilderFlag.FP16`` (precision
  flags are not allowed on strongly typed networks); TRT 11 has no such flag, so the ONNX is first
  converted to FP16 with onnxconverter-common (``keep_io_types=True``: float32 in and out).
* FP32 is FP32: ``BuilderFlag.TF32`` (on by default, so Ampere and newer would run FP32 layers as
  TF32) is cleared for FP32 builds.
* One optimization profile for batch 1..max_batch, a workspace limit, a persistent timing cache;
  parser errors and ``build_serialized_network`` returning None are reported in one line.
* The timing cache is an optimisation, never a reason to lose an engine: a cache that TensorRT
  rejects (``set_timing_cache`` returns False: it was made on another GPU or TensorRT version) is
  discarded with a warning and the build goes on with a fresh one; the engine is written before the
  cache is saved, and a cache that cannot be serialized or written is a warning.
* Output: the edgeskd engine file (JSON header: metadata, TRT version, GPU compute capability).

``build_tensorrt`` is build-engine's TensorRT path: the Q/DQ ONNX for INT8, the engine, and the
accuracy gate on the validation split with the TensorRT runner.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from edgeskd.engine.report import (BuildReport, Candidate, add_clinical, clinical_summary, fail_message, gate,
                                   note_calibration, scores, subclass_counts)
from edgeskd.errors import AccuracyGateError, ArtifactError, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.runtime.engine_file import EngineHeader, write_engine
from edgeskd.runtime.tensorrt_runner import cuda_index, import_tensorrt, make_logger, trt_major
from edgeskd.utils.io import atomic_path, write_bytes_atomic

DEFAULT_TIMING_CACHE = Path("calibration") / "trt-timing.cache"


def _parse_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        out.append(f"node {err.node()}: {err.desc()} ({err.code()})")
    return out


def network_source(onnx_path: str | os.PathLike, precision: str, major: int) -> tuple[bytes, bool]:
    """(ONNX bytes to parse, strongly typed?): FP16 on TRT 11 parses an FP16 copy of the ONNX; FP16 on
    TRT 10 is a builder flag, which only a weakly typed network takes."""
    if precision == "fp16" and major >= 11:
        from edgeskd.quantize.fp16 import fp16_onnx_bytes

        return fp16_onnx_bytes(onnx_path), True
    return Path(onnx_path).read_bytes(), precision != "fp16"


def batch_range(onnx_batch: int, max_batch: int, opt_batch: int | None, onnx_path: str | os.PathLike
                ) -> tuple[int, int, int]:
    """(min, opt, max) batch of the optimization profile: 1..max_batch for a dynamic batch (-1),
    the ONNX's own batch when it is fixed (which must then be ``max_batch``)."""
    if onnx_batch == -1:
        return 1, min(max(opt_batch or max_batch, 1), max_batch), max_batch
    if max_batch != onnx_batch:
        raise UsageError(f"{onnx_path} has a fixed batch of {onnx_batch}; export with --batch dynamic for "
                         f"--max-batch-size {max_batch}")
    return onnx_batch, onnx_batch, onnx_batch


def build_tensorrt_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: str = "int8",
    max_batch: int = 8,
    opt_batch: int | None = None,
    workspace_gib: float = 1.0,
    timing_cache: str | os.PathLike | None = DEFAULT_TIMING_CACHE,
    binding: str = "auto",
    device: int | str = 0,
    meta_overrides: dict[str, Any] | None = None,
    rebuild_from: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
) -> Path:
    """ONNX → edgeskd TensorRT engine file at ``out``, built on GPU ``device`` with the CUDA
    ``binding``. For ``int8`` give the Q/DQ ONNX. ``warn`` hears what did not stop the build (a
    timing cache discarded or not saved)."""
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"precision {precision!r} must be fp32, fp16 or int8")
    if max_batch < 1 or workspace_gib <= 0:
        raise UsageError("--max-batch-size must be >= 1 and --workspace > 0")
    warn = warn or (lambda msg: None)
    trt = import_tensorrt()
    from edgeskd.runtime.cuda_binding import get_binding
    from edgeskd.runtime.onnxrt import load_onnx

    device = cuda_index(device)
    cu = get_binding(binding, device)
    cc = cu.compute_capability(device)
    src_meta = load_onnx(onnx_path, meta_overrides=meta_overrides).meta   # validates metadata
    major = trt_major(trt)
    model_bytes, strongly_typed = network_source(onnx_path, precision, major)

    cu.make_current()       # the builder works on the current device: make it GPU ``device``
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if major == 10 and strongly_typed:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        errs = _parse_errors(parser) or logger.errors() or ["no details"]
        raise ArtifactError(f"TensorRT cannot parse {onnx_path}: {errs[0]}" +
                            (f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16" and major == 10:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)   # on by default: FP32 layers would run as TF32

    inp = network.get_input(0)
    h, w = src_meta.input_size
    lo, opt, hi = batch_range(int(list(inp.shape)[0]), max_batch, opt_batch, onnx_path)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cached = attach_timing_cache(config, cache_path, warn)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errs = logger.errors() or ["no details; rerun with a larger --workspace"]
        raise ArtifactError(f"TensorRT could not build an engine from {onnx_path}: {errs[-1]}")

    out_name = network.get_output(0).name
    header = EngineHeader(
        meta=src_meta.replace(precision=precision), trt_version=str(trt.__version__), compute_capability=cc,
        input_name=inp.name, output_name=out_name, min_batch=lo, max_batch=hi, device_name=cu.device_name(device),
        extra={"onnx": str(rebuild_from or onnx_path), "workspace_gib": workspace_gib, "strongly_typed": strongly_typed,
               "opt_batch": opt},
    )
    path = write_engine(out, bytes(plan), header)
    if cached:
        save_timing_cache(config, cache_path, warn)   # after the engine: a cache problem cannot lose it
    return path


def attach_timing_cache(config: Any, cache_path: Path | None, warn: Callable[[str], None]) -> bool:
    """Give the build a timing cache: the one saved at ``cache_path`` when TensorRT accepts it, else
    a fresh one. A saved cache that fails verification (``set_timing_cache`` returns False: made on
    another GPU or TensorRT version) or cannot be read is discarded with a warning. Returns whether
    a cache is attached (False without ``cache_path``, or if TensorRT refuses even a fresh one)."""
    if cache_path is None:
        return False
    saved = b""
    try:
        saved = cache_path.read_bytes() if cache_path.is_file() else b""
    except OSError as e:
        warn(f"cannot read the TensorRT timing cache {cache_path} ({e.strerror or e}); building without it")
    if saved:
        cache = config.create_timing_cache(saved)
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        warn(f"the TensorRT timing cache {cache_path} does not fit this GPU / TensorRT version (it failed "
             "verification); building without it — it will be replaced by this build's cache")
    cache = config.create_timing_cache(b"")
    if cache is not None and config.set_timing_cache(cache, False):
        return True
    warn("TensorRT refused a fresh timing cache; building without one")
    return False


def save_timing_cache(config: Any, cache_path: Path, warn: Callable[[str], None]) -> None:
    """Write the build's timing cache to ``cache_path`` (atomically); a failure is a warning."""
    try:
        cache = config.get_timing_cache()
        if cache is None:
            raise RuntimeError("the builder config has no timing cache")
        write_bytes_atomic(cache_path, bytes(cache.serialize()))
    except Exception as e:  # noqa: BLE001 - the engine is written; the cache only speeds up the next build
        warn(f"the engine is built, but its TensorRT timing cache could not be saved to {cache_path} ({e})")


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
    binding: str = "auto",
    device: int | str = 0,
    fp32_nodes: tuple[str, ...] | list[str] = (),
    reference: Any = None,
    log: Callable[[str], None] = lambda s: None,
) -> BuildReport:
    """The TensorRT engine for ``precision`` (from the S8S8 Q/DQ ONNX for INT8, ``fp32_nodes`` kept in
    FP32), built and gated on GPU ``device`` with the CUDA ``binding``, on ``val`` against the FP32
    ONNX; a failed gate leaves neither the engine nor a Q/DQ ONNX it wrote. ``reference``:
    ``fp32_path`` is a Q/DQ ONNX from ``edgeskd qat``, built as given and gated against the FP32 F1
    it records."""
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    fp32_clinical: dict[str, Any] = {}
    if reference is None:
        with OnnxRuntimeRunner(fp32_path) as ref:
            fp32_f1, fp32_sub, fp32_clinical = scores(ref, val)
    else:
        fp32_f1, fp32_sub = reference.f1, dict(reference.per_subclass)
    report = BuildReport("tensorrt", precision, out, fp32_f1, fp32_clinical=fp32_clinical, fp32_per_subclass=fp32_sub,
                         subclass_counts=subclass_counts(val), source="fp32" if reference is None else "qdq")
    writes_qdq = precision == "int8" and reference is None
    qdq_existed = qdq_out.exists()
    try:
        src = fp32_path
        if writes_qdq:
            note_calibration(report, calib, cache)
            src = tensorrt_qdq(fp32_path, meta, qdq_out, calib=calib, cache=cache, method=calib_method,
                               weight_qdq_pair=weight_qdq_pair, fp32_nodes=fp32_nodes)
            report.extra_artifacts.append(qdq_out)
        with atomic_path(out) as tmp_engine:
            build_tensorrt_engine(src, tmp_engine, precision=precision, max_batch=max_batch, workspace_gib=workspace_gib,
                                  timing_cache=timing_cache, binding=binding, device=device, rebuild_from=fp32_path,
                                  warn=report.warnings.append)
            c, clinical = _gated_engine(tmp_engine, out, val, precision=precision, fp32_f1=fp32_f1,
                                        max_f1_drop=max_f1_drop, max_batch=max_batch, binding=binding, device=device)
            add_clinical(c, clinical, fp32_clinical, max_f1_drop, report.warnings)
            c.fp32_layers = list(fp32_nodes)
            report.candidates.append(c)
            log(f"  {c.name} F1 {c.f1:.2f} (drop {c.f1_drop:+.2f}) p50 {c.p50_ms:.3f} ms  {clinical_summary(c)}")
            if not c.passed and not force:
                if writes_qdq:
                    qdq_out.unlink(missing_ok=True)
                raise AccuracyGateError(fail_message(c, fp32_f1, max_f1_drop))
    except BaseException:
        if writes_qdq and not qdq_existed:
            qdq_out.unlink(missing_ok=True)
        raise
    report.winner = c.name
    report.reason = "the only TensorRT artifact built"
    return report


def tensorrt_qdq(fp32_path: Path, meta: ModelMeta, qdq_out: Path, *, calib: Any, cache: Path, method: str,
                 weight_qdq_pair: bool, fp32_nodes: tuple[str, ...] | list[str] = ()) -> Path:
    """The S8S8 Q/DQ ONNX at ``qdq_out`` (``fp32_nodes`` left in FP32), checked against what
    TensorRT accepts."""
    from edgeskd.quantize.qdq import inspect_qdq, quantize_qdq

    quantize_qdq(fp32_path, qdq_out, meta, calib=calib, cache=cache, variant="s8s8", method=method,
                 weight_qdq_pair=weight_qdq_pair, fp32_nodes=list(fp32_nodes))
    problems = inspect_qdq(qdq_out).problems()
    if problems:
        qdq_out.unlink(missing_ok=True)
        raise UsageError(f"the Q/DQ ONNX does not fit TensorRT: {'; '.join(problems)}")
    return qdq_out


def _gated_engine(engine_file: Path, out: Path, val, *, precision: str, fp32_f1: float, max_f1_drop: float,
                  max_batch: int, binding: str = "auto", device: int | str = 0) -> tuple[Candidate, dict[str, Any]]:
    """The built engine's F1 on ``val`` (run on the GPU it was built on), its latency, the gate's
    verdict; and its clinical figures."""
    from edgeskd.runtime.tensorrt_runner import TensorRTRunner
    from edgeskd.runtime.timing import latency_and_throughput

    with TensorRTRunner(engine_file, binding=binding, device=device) as r:
        f1, per_sub, clinical = scores(r, val, batch_size=max_batch)
        p50, p99, tp = latency_and_throughput(r, batch=max_batch)
    ok, drop = gate(fp32_f1, f1, max_f1_drop)
    return Candidate(f"tensorrt-{precision}", precision, "TensorRT engine", engine_file.stat().st_size, p50, p99, tp,
                     f1, drop, ok, "", str(out), per_subclass=per_sub), clinical
