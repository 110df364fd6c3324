"""TensorRT backend: an edgeskd engine file (JSON header + plan) run with name-based I/O on one
CUDA stream, device buffers through ``cuda_binding`` (cuda-python, or pycuda).

Loader and runner are separate: ``load_engine`` reads the header (the metadata) and the plan and
checks them against this machine; ``TensorRTRunner.activate`` deserializes the engine, creates the
execution context and allocates the buffers; ``deactivate`` frees them.

Per call: ``set_input_shape`` → async H2D copy → ``execute_async_v3`` → async D2H copy → one
stream sync. Buffers are allocated once for the engine's max batch and bound with
``set_tensor_address``; the output buffer is sized from the engine's own output tensor shape (an
engine whose output disagrees with its metadata is refused). For zero-copy callers (the CUDA preprocessing writes straight into the
input buffer): ``runner.input_buffer``, ``runner.stream`` and ``runner.infer_device(n)``.

The runner's GPU (``device``: an index, "cuda" or "cuda:N") is made current on the calling thread
(``cu.make_current()``) before deserialization, before freeing, and at the start of every inference
call: TensorRT works on whatever device is current, and another binding, a CUDA preprocessor or torch
may have switched it since. Pinned host buffers are dropped in ``deactivate`` with the device ones.

An engine built for another TensorRT version or GPU architecture is refused before
deserialization, with the command that rebuilds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeskd.errors import ArtifactError, BackendUnavailable, UsageError
from edgeskd.runtime.base import Runner
from edgeskd.runtime.engine_file import EngineHeader, check_compatible, read_engine

# Every TensorRT name this module and the builder (edgeskd/engine/tensorrt_build.py) use, by
# TensorRT major version. tests/test_trt_api.py checks (a) that the source uses no TensorRT
# attribute missing from this table and (b) that each name exists in that version's tensorrt.so.
TRT_API: dict[str, tuple[str, ...]] = {
    "common": (
        # module level
        "__version__", "Logger", "ILogger", "Builder", "Runtime", "OnnxParser", "nptype",
        "NetworkDefinitionCreationFlag", "MemoryPoolType", "WORKSPACE", "TensorIOMode", "INPUT",
        "Severity", "ERROR", "WARNING", "INTERNAL_ERROR", "VERBOSE", "INFO",
        # builder / network / parser
        "create_network", "create_builder_config", "create_optimization_profile",
        "build_serialized_network", "num_inputs", "num_outputs", "get_input", "get_output",
        "name", "shape", "parse", "num_errors", "get_error", "desc", "node", "code",
        # builder config
        "set_memory_pool_limit", "add_optimization_profile", "set_shape", "create_timing_cache",
        "set_timing_cache", "get_timing_cache", "serialize", "BuilderFlag", "TF32", "clear_flag",
        # runtime / engine / context
        "deserialize_cuda_engine", "num_io_tensors", "get_tensor_name", "get_tensor_mode",
        "get_tensor_dtype", "get_tensor_shape", "get_tensor_profile_shape", "create_execution_context",
        "set_input_shape", "set_tensor_address", "execute_async_v3",
    ),
    # TRT 10: strongly typed networks are opt-in; FP16 by builder flag on a weakly typed network.
    "10": ("STRONGLY_TYPED", "FP16", "set_flag"),
    # TRT 11: always strongly typed (FP16 comes from an FP16 ONNX); no version-only names.
    "11": (),
}


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def import_tensorrt() -> Any:
    """``import tensorrt`` or a BackendUnavailable that says what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            "TensorRT is not installed (import tensorrt failed); on a machine with an NVIDIA GPU install "
            "TensorRT 10.x/11.x (JetPack 6 ships 10.3) and cuda-python, or use --backend onnxruntime"
        ) from None
    except OSError as e:  # the stub wheel or missing libnvinfer
        raise BackendUnavailable(f"TensorRT is installed but cannot load its libraries ({e}); "
                                 "reinstall TensorRT or use --backend onnxruntime") from None
    major = trt_major(trt)
    if major not in (10, 11):
        raise BackendUnavailable(f"TensorRT {trt.__version__} is not supported; edgeskd needs TensorRT 10.x or 11.x")
    return trt


def make_logger(trt: Any, min_severity: str = "WARNING") -> Any:
    """A trt.ILogger that keeps the messages, so parser/builder errors can be reported."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []
            order = [trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR,
                     trt.ILogger.Severity.WARNING, trt.ILogger.Severity.INFO, trt.ILogger.Severity.VERBOSE]
            self._keep = set(order[: order.index(getattr(trt.ILogger.Severity, min_severity)) + 1])
            self._errors = {trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR}

        def log(self, severity: Any, msg: str) -> None:
            if severity in self._keep:
                self.messages.append((severity, msg))

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in self._errors]

    return _Logger()


def cuda_index(device: int | str | None) -> int:
    """GPU index from 0 / "cuda" / "cuda:1"; "cpu", "auto" or None mean the default GPU (TensorRT
    always runs on one), so one ``device`` option can be passed to every backend."""
    if device is None or isinstance(device, int):
        return int(device or 0)
    d = str(device).strip().lower()
    if d.startswith("cuda:"):
        try:
            return int(d[5:])
        except ValueError:
            raise UsageError(f"device {device!r}: use cuda, cuda:N or a GPU index") from None
    if d.isdigit():
        return int(d)
    return 0


# -- loader -----------------------------------------------------------------------------------------
@dataclass
class EngineArtifact:
    """An engine file read and checked against this machine: its header (the metadata), the plan
    bytes, TensorRT and the CUDA binding that will run it."""

    path: str
    header: EngineHeader
    plan: bytes
    trt: Any
    cu: Any          # the CUDA binding (cuda_binding.get_binding)
    device: int


def load_engine(path: str | os.PathLike, *, binding: str = "auto", device: int | str = 0) -> EngineArtifact:
    """Read the engine file (header problems are reported first), import TensorRT, pick the CUDA
    binding, and refuse an engine built for another TensorRT version or GPU architecture."""
    device = cuda_index(device)
    header, plan = read_engine(path)
    trt = import_tensorrt()
    from edgeskd.runtime.cuda_binding import get_binding

    cu = get_binding(binding, device)
    check_compatible(header, trt_version=trt.__version__, compute_capability=cu.compute_capability(device),
                     source=str(path))
    return EngineArtifact(str(path), header, plan, trt, cu, device)


def deserialize(runtime: Any, plan: bytes, logger: Any, source: str) -> Any:
    """The ICudaEngine of ``plan`` (ArtifactError with TensorRT's last errors if it cannot be read)."""
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        errs = "; ".join(logger.errors()[-2:]) or "no details from TensorRT"
        raise ArtifactError(f"TensorRT cannot deserialize {source} ({errs}); rebuild it with edgeskd build-engine")
    return engine


def output_width(engine: Any, name: str, meta: Any, source: str) -> int:
    """Values per image of output ``name``, from the engine's own tensor shape (batch first, -1 for a
    dynamic batch): what its buffer must hold. An engine whose output does not match its metadata
    (the class or subclass count the probabilities are read with) is refused."""
    shape = tuple(int(d) for d in engine.get_tensor_shape(name))
    if len(shape) < 2 or any(d < 0 for d in shape[1:]):
        raise ArtifactError(f"{source}: output {name!r} has shape {shape}; edgeskd engines output (batch, logits)")
    width = int(np.prod(shape[1:]))
    if width != meta.num_outputs:
        raise ArtifactError(f"{source}: output {name!r} has {width} values per image but its metadata describes "
                            f"{meta.num_outputs} {meta.output.replace('_', ' ')}; rebuild it with edgeskd build-engine")
    return width


def io_names(trt: Any, engine: Any, preferred_output: str, source: str) -> tuple[str, str, list[str]]:
    """(input name, output name, all output names) of an engine with one input."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or not outputs:
        raise ArtifactError(f"{source}: expected 1 input and an output, found {inputs} / {outputs}")
    return inputs[0], preferred_output if preferred_output in outputs else outputs[0], outputs


# -- runner ------------------------------------------------------------------------------------------
class TensorRTRunner(Runner):
    """Runs an edgeskd engine file. ``artifact``: its path, or an ``EngineArtifact`` from
    ``load_engine``. The engine is deserialized and its buffers allocated in ``activate``, freed in
    ``deactivate``."""

    backend = "tensorrt"
    supports_cuda_preprocess = True

    def __init__(self, artifact: str | os.PathLike | EngineArtifact, *, binding: str = "auto",
                 device: int | str = 0) -> None:
        if not isinstance(artifact, EngineArtifact):
            artifact = load_engine(artifact, binding=binding, device=device)
        self.artifact = artifact
        self.path = artifact.path
        self.header = artifact.header
        self._plan = artifact.plan
        self.trt = artifact.trt
        self.cu = artifact.cu
        super().__init__(artifact.header.meta, max_batch=artifact.header.max_batch)
        self.min_batch = artifact.header.min_batch
        self._buffers: list[Any] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def _activate_impl(self) -> None:
        trt = self.trt
        self.cu.make_current()          # deserialization and the buffers belong to this runner's GPU
        try:
            self._logger = make_logger(trt)
            self._runtime = trt.Runtime(self._logger)
            self.engine = deserialize(self._runtime, self._plan, self._logger, self.path)
            self.context = self.engine.create_execution_context()
            self.input_name, self.output_name, outputs = io_names(trt, self.engine, self.header.output_name, self.path)
            self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
            self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
            self._allocate(outputs)
        except BaseException:
            self._deactivate_impl()     # what was allocated before the failure
            raise

    def _allocate(self, outputs: list[str]) -> None:
        """Device and pinned host buffers for the max batch, bound to the context by address."""
        trt = self.trt
        h, w = self.meta.input_size
        k = output_width(self.engine, self.output_name, self.meta, self.path)
        mb = int(self.max_batch or 1)
        self.stream = self.cu.stream_create()
        self._buffers = []          # filled as allocated: a failure frees what came before it
        self.input_buffer = self._malloc(mb * 3 * h * w * self.in_dtype.itemsize)
        self.output_buffer = self._malloc(mb * k * self.out_dtype.itemsize)
        self._host_in = self.cu.host_empty((mb, 3, h, w), self.in_dtype)
        self._host_out = self.cu.host_empty((mb, k), self.out_dtype)
        self.context.set_tensor_address(self.input_name, self.input_buffer.ptr)
        self.context.set_tensor_address(self.output_name, self.output_buffer.ptr)
        for n in outputs:
            if n != self.output_name:   # bind any extra outputs to scratch memory
                shape = tuple(max(int(d), 1) if int(d) >= 0 else mb for d in self.engine.get_tensor_shape(n))
                dt = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
                self.context.set_tensor_address(n, self._malloc(int(np.prod(shape)) * dt.itemsize).ptr)

    def _malloc(self, nbytes: int) -> Any:
        buf = self.cu.malloc(nbytes)
        self._buffers.append(buf)
        return buf

    def _deactivate_impl(self) -> None:
        self.cu.make_current()
        for b in self._buffers:
            b.free()
        self._buffers = []
        self.input_buffer = self.output_buffer = None
        self._host_in = self._host_out = None      # pinned memory is freed when its last view dies
        if getattr(self, "stream", None) is not None:
            self.cu.stream_destroy(self.stream)
            self.stream = None
        self.context = None
        self.engine = None
        self._runtime = None

    # -- inference ------------------------------------------------------------------------------
    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if n < self.min_batch:
            raise UsageError(f"batch {n} is below this engine's minimum batch {self.min_batch}")
        self.cu.make_current()
        host_in = self._host_in[:n]
        np.copyto(host_in, batch, casting="same_kind" if self.in_dtype == batch.dtype else "unsafe")
        self.cu.memcpy_htod_async(self.input_buffer.ptr, host_in, self.stream)
        return self.infer_device(n)

    def infer_device(self, n: int) -> np.ndarray:
        """Run on an input already in ``input_buffer`` (written on ``stream``); returns (n, K) logits."""
        if not 1 <= n <= int(self.max_batch or 1):
            raise UsageError(f"batch {n} is outside this engine's range {self.min_batch}..{self.max_batch}")
        self.cu.make_current()          # every call: the caller's thread may have another device current
        h, w = self.meta.input_size
        if not self.context.set_input_shape(self.input_name, (n, 3, h, w)):
            raise UsageError(f"TensorRT refused input shape {(n, 3, h, w)} for {self.input_name}")
        if not self.context.execute_async_v3(self.stream.handle):
            errs = "; ".join(self._logger.errors()[-2:]) or "no details"
            raise RuntimeError(f"TensorRT execution failed ({errs})")
        host_out = self._host_out[:n]
        self.cu.memcpy_dtoh_async(host_out, self.output_buffer.ptr, self.stream)
        self.cu.stream_synchronize(self.stream)
        return host_out.astype(np.float32, copy=True)
