"""The TensorRT builder and runner against a fake ``tensorrt`` module and a fake CUDA binding, on CPU:
a timing cache that fails verification is discarded and the build goes on; a timing cache that
cannot be saved does not lose the engine; FP32 builds clear TF32; ``build_engine`` takes the GPU
index and the CUDA binding down to the builder and the gate's runner; the runner sizes its output
buffer from the engine's output tensor shape and refuses an engine whose output does not match its
metadata.

The fake engine's "plan" is the ONNX itself, run by ONNX Runtime on the fake device memory when the
context executes, so what the runner copies in and out is checked end to end (a write past a
buffer's end fails the test)."""

from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import pytest

from edgeskd.errors import ArtifactError
from edgeskd.runtime import cuda_binding as cb
from test_quant import META, bright_set, brightness_onnx


# -- fake CUDA memory and binding ---------------------------------------------------------------------
CURRENT = {"device": None}    # the device current on this thread, as the CUDA runtime would have it


class _Buffer:
    def __init__(self, dev: "_Binding", ptr: int, nbytes: int) -> None:
        self.dev, self.ptr, self.nbytes = dev, ptr, nbytes

    def free(self) -> None:
        self.dev.mem.pop(self.ptr, None)


class _Binding:
    """Device memory as host arrays keyed by pointer; every copy is bounds-checked."""

    name = "cuda-python"

    def __init__(self, device: int) -> None:
        self.device = device
        self.mem: dict[int, np.ndarray] = {}
        self.next_ptr = 1 << 20
        self.mallocs: list[int] = []
        self.fail_malloc_at: int | None = None     # the n-th malloc (0-based) fails
        self.streams_alive = 0

    def make_current(self) -> None:
        CURRENT["device"] = self.device

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        assert device == self.device, f"asked about GPU {device} on a binding for GPU {self.device}"
        return (9, 0)

    def device_name(self, device: int = 0) -> str:
        return f"fake GPU {device}"

    def malloc(self, nbytes: int) -> _Buffer:
        if self.fail_malloc_at == len(self.mallocs):
            raise RuntimeError("cudaMalloc failed: cudaErrorMemoryAllocation")
        self.next_ptr += 1 << 24
        self.mem[self.next_ptr] = np.zeros(nbytes, np.uint8)
        self.mallocs.append(nbytes)
        return _Buffer(self, self.next_ptr, nbytes)

    def _region(self, ptr: int, nbytes: int) -> np.ndarray:
        for base, arr in self.mem.items():
            if base <= ptr < base + arr.size:
                if ptr + nbytes > base + arr.size:
                    raise AssertionError(f"device buffer overrun: {nbytes} bytes at offset {ptr - base} of {arr.size}")
                return arr[ptr - base: ptr - base + nbytes]
        raise AssertionError(f"no device buffer at {ptr:#x}")

    def host_empty(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype)

    def memcpy_htod_async(self, dst_ptr: int, src: np.ndarray, stream) -> None:
        self._region(dst_ptr, src.nbytes)[:] = np.ascontiguousarray(src).view(np.uint8).ravel()

    def memcpy_dtoh_async(self, dst: np.ndarray, src_ptr: int, stream) -> None:
        dst.view(np.uint8).ravel()[:] = self._region(src_ptr, dst.nbytes)

    def stream_create(self):
        self.streams_alive += 1
        return cb.CudaStream(11, None)

    def stream_synchronize(self, stream) -> None:
        pass

    def stream_destroy(self, stream) -> None:
        self.streams_alive -= 1


# -- fake tensorrt --------------------------------------------------------------------------------------
class _ILogger:
    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self) -> None:
        pass


class _Cache:
    def __init__(self, trt: "_FakeTRT", data: bytes) -> None:
        self.trt, self.data = trt, bytes(data)

    def serialize(self) -> bytes:
        if self.trt.serialize_error:
            raise RuntimeError("serialize failed")
        return self.trt.cache_tag + b":tactics"


class _Config:
    def __init__(self, trt: "_FakeTRT") -> None:
        self.trt = trt
        self.flags = {"TF32"}          # TensorRT's default: TF32 on
        self.cache: _Cache | None = None
        self.cache_calls: list[tuple[bytes, bool]] = []

    def set_memory_pool_limit(self, pool, size) -> None:
        pass

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.flags.discard(flag)

    def add_optimization_profile(self, profile) -> None:
        pass

    def create_timing_cache(self, data: bytes) -> _Cache:
        return _Cache(self.trt, data)

    def set_timing_cache(self, cache: _Cache, ignore_mismatch: bool) -> bool:
        ok = cache.data == b"" or cache.data.startswith(self.trt.cache_tag)   # verification
        self.cache_calls.append((cache.data, ok))
        if ok:
            self.cache = cache
        return ok

    def get_timing_cache(self) -> _Cache | None:
        return self.cache


class _Network:
    def __init__(self) -> None:
        self.model: onnx.ModelProto | None = None
        self.onnx_bytes = b""

    def get_input(self, i: int):
        inp = self.model.graph.input[0]
        dims = [d.dim_value if d.dim_value else -1 for d in inp.type.tensor_type.shape.dim]
        return types.SimpleNamespace(name=inp.name, shape=dims)

    def get_output(self, i: int):
        return types.SimpleNamespace(name=self.model.graph.output[0].name)


class _Parser:
    num_errors = 0

    def __init__(self, network: _Network, logger) -> None:
        self.network = network

    def parse(self, data: bytes) -> bool:
        self.network.onnx_bytes = bytes(data)
        self.network.model = onnx.load_from_string(data)
        return True


class _Profile:
    def set_shape(self, name, lo, opt, hi) -> None:
        self.shapes = (lo, opt, hi)


class _Builder:
    def __init__(self, trt: "_FakeTRT") -> None:
        self.trt = trt
        trt.seen.append(("builder", CURRENT["device"]))

    def create_network(self, flags: int) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        c = _Config(self.trt)
        self.trt.configs.append(c)
        return c

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
        return network.onnx_bytes         # the "plan": the ONNX, run by ONNX Runtime in the context


class _Context:
    def __init__(self, engine: "_Engine") -> None:
        self.engine = engine
        self.addr: dict[str, int] = {}
        self.shape: tuple[int, ...] = ()

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addr[name] = ptr

    def set_input_shape(self, name: str, shape) -> bool:
        self.shape = tuple(shape)
        return True

    def execute_async_v3(self, stream_handle) -> bool:
        e = self.engine
        e.trt.seen.append(("execute", CURRENT["device"]))
        dev = e.trt.binding
        x = np.frombuffer(dev._region(self.addr[e.input], int(np.prod(self.shape)) * 4).tobytes(), np.float32)
        y = e.session.run(None, {e.input: x.reshape(self.shape)})[0]
        dev.memcpy_htod_async(self.addr[e.output], np.ascontiguousarray(y, np.float32), None)
        return True


class _Engine:
    def __init__(self, trt: "_FakeTRT", plan: bytes) -> None:
        import onnxruntime as ort

        self.trt = trt
        model = onnx.load_from_string(plan)
        self.input, self.output = model.graph.input[0].name, model.graph.output[0].name
        self.k = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        self.hw = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:])
        self.session = ort.InferenceSession(plan, providers=["CPUExecutionProvider"])
        self.num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return (self.input, self.output)[i]

    def get_tensor_mode(self, name: str):
        return self.trt.TensorIOMode.INPUT if name == self.input else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self.input:
            return (-1, 3, *self.hw)
        return self.trt.output_shape or (-1, self.k)

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Runtime:
    def __init__(self, trt: "_FakeTRT") -> None:
        self.trt = trt

    def deserialize_cuda_engine(self, plan: bytes) -> _Engine:
        self.trt.seen.append(("deserialize", CURRENT["device"]))
        return _Engine(self.trt, plan)


class _FakeTRT(types.ModuleType):
    def __init__(self, version: str = "10.3.0") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.ILogger = _ILogger
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32")
        self.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
        self.OnnxParser = _Parser
        self.nptype = np.dtype
        self.configs: list[_Config] = []
        self.cache_tag = b"fake-gpu-9.0"
        self.serialize_error = False
        self.output_shape: tuple[int, ...] | None = None
        self.binding: _Binding | None = None
        self.seen: list[tuple[str, int | None]] = []     # (TensorRT call, the device current then)

    def Builder(self, logger) -> _Builder:  # noqa: N802 - TensorRT's own name
        return _Builder(self)

    def Runtime(self, logger) -> _Runtime:  # noqa: N802 - TensorRT's own name
        return _Runtime(self)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fake TensorRT 10.3 and a fake CUDA binding; ``bindings_asked`` records get_binding's arguments."""
    trt = _FakeTRT()
    asked: list[tuple[str, int]] = []

    def get_binding(name: str = "auto", device: int = 0) -> _Binding:
        asked.append((name, device))
        if trt.binding is None or trt.binding.device != device:
            trt.binding = _Binding(device)
        return trt.binding

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(CURRENT, "device", None)
    monkeypatch.setattr(cb, "get_binding", get_binding)
    trt.bindings_asked = asked
    return trt


def _build(tmp_path, trt, precision="fp32", cache=None, **kw):
    from edgeskd.engine.tensorrt_build import build_tensorrt_engine

    onnx_path = tmp_path / "m.onnx"
    if not onnx_path.exists():
        brightness_onnx(onnx_path)
    warnings: list[str] = []
    out = build_tensorrt_engine(onnx_path, tmp_path / f"m.{precision}.engine", precision=precision, max_batch=4,
                                timing_cache=cache, warn=warnings.append, **kw)
    return out, warnings


# -- the timing cache -----------------------------------------------------------------------------------
def test_timing_cache_from_another_gpu_is_discarded_and_replaced(tmp_path, fake_gpu):
    from edgeskd.runtime.engine_file import read_engine

    cache = tmp_path / "trt-timing.cache"
    cache.write_bytes(b"other-gpu-8.7:tactics")
    out, warnings = _build(tmp_path, fake_gpu, cache=cache)
    config = fake_gpu.configs[-1]
    # the saved cache was offered, failed verification, and a fresh one was used instead
    assert config.cache_calls == [(b"other-gpu-8.7:tactics", False), (b"", True)]
    assert len(warnings) == 1 and "failed verification" in warnings[0] and str(cache) in warnings[0]
    header, plan = read_engine(out)
    assert plan == (tmp_path / "m.onnx").read_bytes() and header.meta.precision == "fp32"
    assert cache.read_bytes() == b"fake-gpu-9.0:tactics"          # replaced by this build's cache
    # the next build accepts the new cache without a warning
    _, warnings = _build(tmp_path, fake_gpu, cache=cache)
    assert fake_gpu.configs[-1].cache_calls == [(b"fake-gpu-9.0:tactics", True)] and warnings == []


def test_timing_cache_that_cannot_be_saved_keeps_the_engine(tmp_path, fake_gpu):
    from edgeskd.runtime.engine_file import read_engine

    cache = tmp_path / "trt-timing.cache"
    fake_gpu.serialize_error = True
    out, warnings = _build(tmp_path, fake_gpu, cache=cache)
    assert read_engine(out)[1] == (tmp_path / "m.onnx").read_bytes()
    assert not cache.exists()
    assert len(warnings) == 1 and "engine is built" in warnings[0] and "serialize failed" in warnings[0]


def test_no_timing_cache_asked_for_none_used(tmp_path, fake_gpu):
    out, warnings = _build(tmp_path, fake_gpu, cache=None)
    assert out.is_file() and warnings == [] and fake_gpu.configs[-1].cache_calls == []


# -- FP32 is FP32 -------------------------------------------------------------------------------------
def test_fp32_build_clears_tf32_and_fp16_sets_its_flag(tmp_path, fake_gpu):
    _build(tmp_path, fake_gpu, precision="fp32")
    assert "TF32" not in fake_gpu.configs[-1].flags
    _build(tmp_path, fake_gpu, precision="fp16")
    assert fake_gpu.configs[-1].flags == {"TF32", "FP16"}           # TRT 10: FP16 by flag; TF32 left as is


# -- the GPU index and the binding reach the builder and the gate's runner ------------------------------
def test_build_engine_passes_gpu_index_and_binding_through(tmp_path, fake_gpu, monkeypatch):
    from edgeskd.engine.build import build_engine
    from edgeskd.runtime import timing

    monkeypatch.setattr(timing, "latency_and_throughput", lambda r, batch=32, seconds=2.0: (1.0, 2.0, 100.0))
    onnx_path = brightness_onnx(tmp_path / "m.onnx")
    rep = build_engine(onnx_path, precision="fp32", backend="tensorrt", dataset=bright_set(), max_batch=4,
                       calib_dir=tmp_path / "calib", binding="cuda-python", device="cuda:1")
    assert fake_gpu.bindings_asked and set(fake_gpu.bindings_asked) == {("cuda-python", 1)}
    # resolve_backend, the builder, and the gate's runner each asked for GPU 1
    assert len(fake_gpu.bindings_asked) >= 3
    (c,) = rep.candidates
    assert c.passed and c.f1 == rep.fp32_f1 == 100.0
    from edgeskd.runtime.engine_file import read_engine_header

    assert read_engine_header(rep.artifact).device_name == "fake GPU 1"


# -- the runner's output buffer -------------------------------------------------------------------------
def _engine(tmp_path, trt):
    return _build(tmp_path, trt)[0]


def test_runner_output_buffer_sized_from_the_engine_output_shape(tmp_path, fake_gpu):
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner
    from edgeskd.runtime.tensorrt_runner import TensorRTRunner

    eng = _engine(tmp_path, fake_gpu)
    x = np.random.default_rng(0).uniform(-2, 2, size=(3, 3, 16, 16)).astype(np.float32)
    ref = OnnxRuntimeRunner(tmp_path / "m.onnx").infer(x)
    fake_gpu.output_shape = (-1, 2, 1, 1)           # (N, K, 1, 1): K values per image all the same
    with TensorRTRunner(eng) as r:
        dev = fake_gpu.binding
        in_bytes, out_bytes = dev.mallocs[:2]
        assert in_bytes == 4 * 3 * 16 * 16 * 4 and out_bytes == 4 * 2 * 4      # max batch 4, K = 2, float32
        np.testing.assert_allclose(r.infer(x), ref, rtol=1e-6, atol=1e-6)


def test_runner_refuses_an_engine_whose_output_does_not_match_its_metadata(tmp_path, fake_gpu):
    from edgeskd.runtime.tensorrt_runner import TensorRTRunner

    eng = _engine(tmp_path, fake_gpu)
    assert META.num_outputs == 2
    for shape, msg in [((-1, 5), "5 values per image.*2 class logits.*rebuild"),
                       ((-1,), r"shape \(-1,\)"), ((-1, -1), "shape")]:
        fake_gpu.output_shape = shape
        r = TensorRTRunner(eng)
        with pytest.raises(ArtifactError, match=msg):
            r.activate()
        assert not r.active


# -- the chosen GPU is current for every TensorRT call; nothing is left behind --------------------------------
def test_tensorrt_makes_its_gpu_current_before_build_activate_and_every_inference(tmp_path, fake_gpu):
    """TensorRT works on the current device. Something else (another binding, torch) switching it to
    GPU 0 between the steps must not move the build, the deserialization or an inference off GPU 1."""
    from edgeskd.runtime.tensorrt_runner import TensorRTRunner

    CURRENT["device"] = 0
    eng, _ = _build(tmp_path, fake_gpu, device="cuda:1")
    x = np.zeros((2, 3, 16, 16), np.float32)
    r = TensorRTRunner(eng, device=1)
    CURRENT["device"] = 0
    r.activate()
    for _ in range(2):
        CURRENT["device"] = 0
        r.infer(x)
    CURRENT["device"] = 0
    r.infer_device(1)                       # the zero-copy path (input written by the CUDA preprocessing)
    r.deactivate()
    assert fake_gpu.seen == [("builder", 1), ("deserialize", 1), ("execute", 1), ("execute", 1), ("execute", 1)]


def test_deactivate_drops_the_pinned_host_buffers(tmp_path, fake_gpu):
    import gc
    import weakref

    from edgeskd.runtime.tensorrt_runner import TensorRTRunner

    r = TensorRTRunner(_engine(tmp_path, fake_gpu))
    with r:
        r.infer(np.zeros((1, 3, 16, 16), np.float32))
        pinned = [weakref.ref(r._host_in), weakref.ref(r._host_out)]
    gc.collect()
    assert [w() for w in pinned] == [None, None]          # freed with the device buffers, not at exit
    assert fake_gpu.binding.mem == {} and fake_gpu.binding.streams_alive == 0


def test_activation_that_fails_midway_frees_what_it_allocated(tmp_path, fake_gpu):
    from edgeskd.runtime.tensorrt_runner import TensorRTRunner

    eng = _engine(tmp_path, fake_gpu)
    r = TensorRTRunner(eng)
    fake_gpu.binding.fail_malloc_at = len(fake_gpu.binding.mallocs) + 1     # the output buffer
    with pytest.raises(RuntimeError, match="cudaMalloc failed"):
        r.activate()
    assert not r.active and fake_gpu.binding.mem == {} and fake_gpu.binding.streams_alive == 0
    fake_gpu.binding.fail_malloc_at = None
    with r:                                                  # and it can be activated again
        assert r.infer(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 2)


def test_stream_runner_runs_on_the_chosen_gpu(tmp_path, fake_gpu):
    from edgeskd.stream.pipeline import load_stream_runner

    eng, _ = _build(tmp_path, fake_gpu, device=1)
    fake_gpu.bindings_asked.clear()
    r = load_stream_runner(eng, threads=1, device="cuda:1")
    assert r.cu.device == 1 and fake_gpu.bindings_asked == [("auto", 1)]
    with r:
        r.infer(np.zeros((1, 3, 16, 16), np.float32))
    assert fake_gpu.seen[-2:] == [("deserialize", 1), ("execute", 1)]
