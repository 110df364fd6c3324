"""Build a TensorRT engine from an ONNX (FP32, FP16, or Q/DQ INT8) — TensorRT 10.x and 11.x.

* INT8 is explicit quantization: the Q/DQ ONNX is parsed into a strongly typed network
  (TRT 10: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TRT 11: always strongly typed).
* FP16: TRT 10 builds the FP32 ONNX as a weakly typed network with ``BuilderFlag.FP16`` (precision
  flags are not allowed on strongly typed networks); TRT 11 has no such flag, so the ONNX is first
  converted to FP16 with onnxconverter-common (``keep_io_types=True``: float32 in and out).
* One optimization profile for batch 1..max_batch, a workspace limit, a persistent timing cache;
  parser errors and ``build_serialized_network`` returning None are reported in one line.
* Output: the edgeskd engine file (JSON header: metadata, TRT version, GPU compute capability).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeskd.errors import ArtifactError, UsageError
from edgeskd.runtime.engine_file import EngineHeader, write_engine
from edgeskd.runtime.tensorrt_runner import import_tensorrt, make_logger, trt_major
from edgeskd.utils.io import write_bytes_atomic

DEFAULT_TIMING_CACHE = Path("calibration") / "trt-timing.cache"


def fp16_onnx_bytes(onnx_path: str | os.PathLike) -> bytes:
    """An FP16 copy of an FP32 ONNX with float32 inputs/outputs (for TRT 11's strongly typed FP16)."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(onnx_path))
    fp16 = float16.convert_float_to_float16(model, keep_io_types=True)
    return fp16.SerializeToString()


def _parse_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        out.append(f"node {err.node()}: {err.desc()} ({err.code()})")
    return out


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
    device: int = 0,
    meta_overrides: dict[str, Any] | None = None,
    rebuild_from: str | os.PathLike | None = None,
) -> Path:
    """ONNX → edgeskd TensorRT engine file at ``out``. For ``int8`` give the Q/DQ ONNX."""
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"precision {precision!r} must be fp32, fp16 or int8")
    if max_batch < 1 or workspace_gib <= 0:
        raise UsageError("--max-batch must be >= 1 and --workspace > 0")
    trt = import_tensorrt()
    from edgeskd.runtime.cuda_binding import get_binding
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    cu = get_binding(binding, device)
    cc = cu.compute_capability(device)
    src_meta = OnnxRuntimeRunner(onnx_path, meta_overrides=meta_overrides).meta   # validates metadata
    major = trt_major(trt)
    model_bytes = Path(onnx_path).read_bytes()
    strongly_typed = True
    if precision == "fp16" and major >= 11:
        model_bytes = fp16_onnx_bytes(onnx_path)
    elif precision == "fp16":
        strongly_typed = False

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

    inp = network.get_input(0)
    dims = list(inp.shape)
    h, w = src_meta.input_size
    if dims[0] == -1:
        lo, opt, hi = 1, min(max(opt_batch or max_batch, 1), max_batch), max_batch
    else:
        lo = opt = hi = int(dims[0])
        if max_batch != hi:
            raise UsageError(f"{onnx_path} has a fixed batch of {hi}; export with --batch dynamic for --max-batch {max_batch}")
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errs = logger.errors() or ["no details; rerun with a larger --workspace"]
        raise ArtifactError(f"TensorRT could not build an engine from {onnx_path}: {errs[-1]}")
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))

    out_name = network.get_output(0).name
    header = EngineHeader(
        meta=src_meta.replace(precision=precision), trt_version=str(trt.__version__), compute_capability=cc,
        input_name=inp.name, output_name=out_name, min_batch=lo, max_batch=hi, device_name=cu.device_name(device),
        extra={"onnx": str(rebuild_from or onnx_path), "workspace_gib": workspace_gib, "strongly_typed": strongly_typed,
               "opt_batch": opt},
    )
    return write_engine(out, bytes(plan), header)
