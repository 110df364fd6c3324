"""What a first run on a GPU box would hit, shown on CPU with fakes of the parts that need a GPU:
a missing NVRTC (clean error, nvcc fallback), the old cuda-python layout, the GPU index reaching the
kernel loader, the kernel argument packing against the compiled PTX, pycuda's context popped at
close, and native handles."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

from edgeskd.errors import BackendUnavailable
from edgeskd.runtime import cuda_binding as cb
from edgeskd.runtime import cuda_preprocess as cp
from helpers_stream import META, make_video


@pytest.fixture(autouse=True)
def _fresh_kernel_cache():
    cp.kernel_image.cache_clear()
    yield
    cp.kernel_image.cache_clear()


def _missing_nvrtc(monkeypatch):
    """cuda-python without NVRTC: the module imports, its first call fails (as with cuda.pathfinder)."""
    try:
        from cuda.pathfinder import DynamicLibNotFoundError as NotFound
    except ImportError:
        NotFound = RuntimeError
    fake = types.ModuleType("cuda.bindings.nvrtc")

    def version():
        raise NotFound('Failure finding "libnvrtc.so": No such file\nmore detail')

    fake.nvrtcVersion = version
    fake.nvrtcGetSupportedArchs = version
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", fake)


def _has_real_nvrtc() -> bool:
    try:
        cp._nvrtc()
        return True
    except BackendUnavailable:
        return False


def test_missing_nvrtc_is_a_clean_error(monkeypatch):
    _missing_nvrtc(monkeypatch)
    with pytest.raises(BackendUnavailable, match=r"NVRTC is not available \(Failure finding \"libnvrtc.so\""):
        cp._nvrtc()
    with pytest.raises(BackendUnavailable, match="NVRTC is not available"):
        cp.compile_nvrtc("compute_75")


def test_missing_nvrtc_falls_back_to_nvcc(monkeypatch):
    if cp.find_nvcc() is None:
        pytest.skip("nvcc not installed")
    _missing_nvrtc(monkeypatch)
    cubin = cp.kernel_image((8, 7))          # sm_87 is a real target of every nvcc >= 11.4
    assert cubin[:4] == b"\x7fELF"
    assert all(name.encode() in cubin for name in cp.KERNELS)
    ptx = cp.kernel_image((9, 9))             # no sm_99: PTX for the newest architecture below it
    assert ptx.endswith(b"\0") and b".entry edgeskd_preprocess_yuv_f32" in ptx


def test_missing_nvrtc_and_nvcc_says_both(monkeypatch):
    _missing_nvrtc(monkeypatch)
    monkeypatch.setattr(cp, "find_nvcc", lambda: None)
    with pytest.raises(BackendUnavailable, match="cannot compile the CUDA preprocessing kernel: NVRTC is not available.*nvcc"):
        cp.kernel_image((8, 7))


def test_old_cuda_python_layout_is_found(monkeypatch):
    """cuda-python 12.4/12.5: cuda.cudart / cuda.cuda / cuda.nvrtc, no cuda.bindings."""
    for kind, old in (("runtime", "cuda.cudart"), ("driver", "cuda.cuda"), ("nvrtc", "cuda.nvrtc")):
        monkeypatch.setitem(sys.modules, f"cuda.bindings.{kind}", None)    # import raises ImportError
        fake = types.ModuleType(old)
        monkeypatch.setitem(sys.modules, old, fake)
        assert cb.import_cuda_module(kind) is fake
        monkeypatch.setitem(sys.modules, old, None)
        with pytest.raises(ImportError, match="cuda-python is not installed"):
            cb.import_cuda_module(kind)


def test_old_layout_driver_reaches_the_kernel_loader(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", None)
    fake = types.ModuleType("cuda.cuda")

    def no_driver(flags):
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    fake.cuInit = no_driver
    monkeypatch.setitem(sys.modules, "cuda.cuda", fake)
    with pytest.raises(BackendUnavailable, match="CUDA driver is not usable.*libcuda"):
        cp._CudaPythonKernels((8, 7), device=0)


def test_native_handle_uses_get_cuda_native_handle():
    pytest.importorskip("cuda.bindings.utils")
    from cuda.bindings import driver, runtime

    assert cb.native_handle(runtime.cudaStream_t(1234)) == 1234
    assert cb.native_handle(driver.CUstream(5678)) == 5678
    assert cb.native_handle(42) == 42


def test_native_handle_without_utils_falls_back_to_int(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)

    class Handle:
        def __int__(self):
            return 99

    assert cb.native_handle(Handle()) == 99


# -- a fake GPU behind the real code: device index and launch arguments ------------------------------------
class _Result:
    CUDA_SUCCESS = 0


class _FakeDriver(types.ModuleType):
    """The driver calls _CudaPythonKernels makes, recorded; every call succeeds."""

    def __init__(self):
        super().__init__("cuda.bindings.driver")
        self.CUresult = _Result
        self.calls: list[tuple] = []
        self.launches: list[tuple[str, int]] = []

    def __getattr__(self, name):
        if not name.startswith("cu"):
            raise AttributeError(name)

        def call(*args):
            self.calls.append((name, *args))
            if name == "cuModuleGetFunction":
                return 0, args[1].decode()
            if name == "cuLaunchKernel":
                self.launches.append((args[0], args[8]))      # (function, stream)
                return (0,)
            return (0, f"{name}-handle") if name in ("cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuModuleLoadData") else (0,)

        return call

    def CUstream(self, handle):  # noqa: N802 - the driver's own name
        return ("CUstream", handle)


class _FakeBuffer:
    def __init__(self, ptr, nbytes):
        self.ptr, self.nbytes = ptr, nbytes

    def free(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _FakeBinding:
    name = "cuda-python"

    def __init__(self, device):
        self.device = device
        self.asked_cc: list[int] = []
        self.next_ptr = 1 << 20
        self.made_current = 0

    def make_current(self):
        self.made_current += 1

    def compute_capability(self, device=0):
        self.asked_cc.append(device)
        return (8, 7)

    def host_empty(self, shape, dtype=np.float32):
        return np.zeros(shape, dtype)

    def malloc(self, nbytes):
        self.next_ptr += 1 << 24
        return _FakeBuffer(self.next_ptr, nbytes)

    def memcpy_htod_async(self, dst, src, stream):
        pass

    def stream_create(self):
        return cb.CudaStream(7, None)


def _ptx_params(ptx: str, entry: str) -> list[str]:
    body = ptx.split(f".entry {entry}(", 1)[1].split(")", 1)[0]
    return re.findall(r"\.param \.(\w+)", body)


@pytest.mark.skipif(not _has_real_nvrtc(), reason="cuda-python (NVRTC) not installed")
def test_device_index_and_kernel_arguments_reach_the_driver(monkeypatch, tmp_path):
    driver = _FakeDriver()
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
    bindings: list[_FakeBinding] = []

    def fake_get_binding(name="auto", device=0):
        bindings.append(_FakeBinding(device))
        return bindings[-1]

    monkeypatch.setattr(cb, "get_binding", fake_get_binding)
    runner = types.SimpleNamespace(metadata=META.replace(input_size=[24, 40]), in_dtype=np.dtype(np.float16),
                                   cu=_FakeBinding(3), input_buffer=_FakeBuffer(1 << 30, 0), stream=cb.CudaStream(5, None))
    pre = cp.CudaPreprocessor.for_runner(runner)
    assert pre.device == 3 and bindings[-1].device == 3 and bindings[-1].asked_cc == [3]
    assert ("cuDeviceGet", 3) in driver.calls            # not device 0
    assert any(c[0] == "cuCtxSetCurrent" for c in driver.calls)

    import av

    ptx = cp.compile_nvrtc("compute_75").decode()
    frames = []
    with av.open(str(make_video(tmp_path / "v.mp4", n=1, w=64, h=48))) as c:
        frames = list(c.decode(video=0))
    pre.run_into_runner(np.zeros((48, 64, 3), np.uint8), (0, 0, 48, 48), 1)
    pre.run_frame_into_runner(frames[0], None, 0)
    assert pre.cu.made_current == 2          # before each upload: the binding's GPU, whatever was current
    # the right kernel for the runner's dtype, on the runner's stream
    assert driver.launches == [("edgeskd_preprocess_f16", ("CUstream", 5)),
                               ("edgeskd_preprocess_yuv_f16", ("CUstream", 5))]
    # the packed argument arrays match the PTX parameter list, type by type
    got = _packed_args(monkeypatch, pre, frames[0])
    for name, args in got.items():
        kinds = {"u64": np.uint64, "u32": np.int32, "s32": np.int32, "f32": np.float32}
        assert [kinds[k] for k in _ptx_params(ptx, name)] == [a.dtype.type for a in args], name
    pre.close()
    assert any(c[0] == "cuModuleUnload" for c in driver.calls) and any(c[0] == "cuDevicePrimaryCtxRelease" for c in driver.calls)


def _packed_args(monkeypatch, pre, frame) -> dict[str, list[np.ndarray]]:
    seen: dict[str, list[np.ndarray]] = {}
    monkeypatch.setattr(pre.kernels, "launch", lambda name, g, b, s, args: seen.__setitem__(name, args))
    stream = cb.CudaStream(5, None)
    pre.run(np.zeros((48, 64, 3), np.uint8), None, 1 << 30, stream)
    pre.run_frame(frame, (8, 0, 48, 48), 1 << 30, stream)
    return seen


# -- pycuda: the primary context is popped ------------------------------------------------------------------
def _fake_pycuda(monkeypatch) -> types.SimpleNamespace:
    log = types.SimpleNamespace(pushed=0, popped=0, cleared=0, registered=[], stack=[])

    class Ctx:
        def __init__(self, dev):
            self.handle = 1000 + dev

        def push(self):
            log.pushed += 1
            log.stack.append(self)

        def pop(self):
            log.popped += 1
            log.stack.pop()

    class Context:
        @staticmethod
        def get_current():
            return log.stack[-1] if log.stack else None

    class Device:
        def __init__(self, i):
            self.i = i

        @staticmethod
        def count():
            return 2

        def retain_primary_context(self):
            return Ctx(self.i)

        def compute_capability(self):
            return (8, 7)

    def module_from_buffer(image):
        raise drv.Error("cuModuleLoadDataEx failed: device kernel image is invalid - "
                        "the provided PTX was compiled with an unsupported toolchain.")

    drv = types.ModuleType("pycuda.driver")
    drv.init = lambda: None
    drv.Device, drv.Context, drv.module_from_buffer = Device, Context, module_from_buffer
    drv.Error = type("Error", (Exception,), {})       # pycuda's own, not a RuntimeError
    tools = types.ModuleType("pycuda.tools")
    tools.clear_context_caches = lambda: setattr(log, "cleared", log.cleared + 1)
    pkg = types.ModuleType("pycuda")
    pkg.driver, pkg.tools = drv, tools
    for name, mod in (("pycuda", pkg), ("pycuda.driver", drv), ("pycuda.tools", tools)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(cb.atexit, "register", lambda f: log.registered.append(f))
    monkeypatch.setattr(cb.atexit, "unregister", lambda f: log.registered.remove(f))
    return log


def test_pycuda_context_is_popped_at_close_and_registered_for_exit(monkeypatch):
    log = _fake_pycuda(monkeypatch)
    monkeypatch.setattr(cb, "_CACHE", {})
    b = cb.get_binding("pycuda", 1)
    assert (log.pushed, log.popped) == (1, 0)
    assert log.registered == [b.close]          # pycuda aborts at exit if the stack is not empty
    assert cb.get_binding("pycuda", 1) is b and log.pushed == 1   # cached, and its context is current
    other = cb.PyCudaBinding(0)                  # another GPU's context pushed on top
    assert cb.get_binding("pycuda", 1) is b and log.pushed == 3 and log.stack[-1] is b.ctx
    other.close()
    b.close()
    assert (log.popped, log.cleared, log.registered) == (3, 2, [])
    b.close()                                   # idempotent
    assert log.popped == 3 and log.stack == []
    assert cb.get_binding("pycuda", 1) is not b  # a closed binding is not handed out again


# -- stream --preprocess auto: CPU preprocessing with one warning line -------------------------------------
def _gpu_looking_runner(tmp_path, monkeypatch):
    """An ONNX Runtime runner dressed as a TensorRT one (the attributes the CUDA path needs), on a
    fake GPU whose kernel cannot be built: NVRTC missing and no nvcc."""
    from edgeskd.runtime.loader import load_runner
    from helpers_stream import make_onnx

    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", _FakeDriver())
    monkeypatch.setattr(cb, "get_binding", lambda name="auto", device=0: _FakeBinding(device))
    _missing_nvrtc(monkeypatch)
    monkeypatch.setattr(cp, "find_nvcc", lambda: None)
    runner = load_runner(make_onnx(tmp_path / "m.onnx"), threads=1)

    def never(n):
        raise AssertionError("the GPU path ran")

    runner.cu, runner.in_dtype, runner.infer_device = _FakeBinding(0), np.dtype(np.float32), never
    runner.input_buffer, runner.stream = _FakeBuffer(1 << 30, 0), cb.CudaStream(5, None)
    runner.supports_cuda_preprocess = True
    return runner


def test_stream_auto_falls_back_to_cpu_preprocessing_with_one_warning(tmp_path, monkeypatch):
    from edgeskd.stream.pipeline import StreamConfig, run_stream

    runner = _gpu_looking_runner(tmp_path, monkeypatch)
    video = make_video(tmp_path / "v.mp4", n=6, w=160, h=120)
    warned: list[str] = []
    res = run_stream(StreamConfig(video=str(video), realtime=False, measure_ceiling=False), runner=runner,
                     warn=warned.append)
    assert res.stats["source"]["preprocess"] == "cpu" and res.stats["frames_processed"] == 6
    cuda_warnings = [w for w in warned if "CUDA preprocessing" in w]
    assert len(cuda_warnings) == 1 and "\n" not in cuda_warnings[0]
    assert "NVRTC is not available" in cuda_warnings[0] and "using CPU preprocessing" in cuda_warnings[0]
    assert cuda_warnings[0] in res.warnings


def test_stream_preprocess_cuda_reports_the_missing_compiler(tmp_path, monkeypatch):
    from edgeskd.stream.pipeline import StreamConfig, run_stream

    runner = _gpu_looking_runner(tmp_path, monkeypatch)
    video = make_video(tmp_path / "v.mp4", n=2, w=160, h=120)
    with pytest.raises(BackendUnavailable, match="cannot compile the CUDA preprocessing kernel"):
        run_stream(StreamConfig(video=str(video), preprocess="cuda", measure_ceiling=False), runner=runner)


def test_preprocessor_for_stream_choices():
    cpu_runner = types.SimpleNamespace(backend="onnxruntime")
    assert cp.preprocessor_for_stream(cpu_runner, "cpu") is None
    assert cp.preprocessor_for_stream(cpu_runner, "auto") is None
    with pytest.raises(BackendUnavailable, match="needs a GPU runner"):
        cp.preprocessor_for_stream(cpu_runner, "cuda")
    from edgeskd.errors import UsageError

    with pytest.raises(UsageError):
        cp.preprocessor_for_stream(cpu_runner, "gpu")


@pytest.mark.gpu
def test_kernel_built_by_nvcc_runs_on_the_gpu(tmp_path, monkeypatch):
    """No NVRTC: the nvcc-built image is loaded and gives the CPU path's numbers."""
    if cp.find_nvcc() is None:
        pytest.skip("nvcc not installed")
    from edgeskd.runtime.preprocess import preprocess_for
    from helpers_stream import decode_all

    _missing_nvrtc(monkeypatch)
    frames = np.stack(decode_all(make_video(tmp_path / "v.mp4", n=2, w=320, h=240)))
    with cp.CudaPreprocessor(META) as pre:
        np.testing.assert_allclose(pre.to_host(frames, (40, 0, 240, 240)),
                                   preprocess_for(META, frames, crop=(40, 0, 240, 240)), rtol=0, atol=1e-5)


# -- a kernel the driver cannot load: "backend unavailable", nothing retained, CPU preprocessing -----------
class _LoadError:
    name = "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"


class _DriverRefusingTheImage(_FakeDriver):
    def __getattr__(self, name):
        if name == "cuModuleLoadData":
            return lambda image: (self.calls.append((name,)), (_LoadError(), None))[1]
        return super().__getattr__(name)


def test_kernel_the_driver_refuses_is_backend_unavailable_and_releases_its_context(monkeypatch):
    driver = _DriverRefusingTheImage()
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
    monkeypatch.setattr(cp, "kernel_image", lambda cc: b"// PTX newer than the driver")
    with pytest.raises(BackendUnavailable, match=r"cannot be loaded \(cuModuleLoadData failed: "
                                                 r"CUDA_ERROR_UNSUPPORTED_PTX_VERSION\).*--preprocess cpu"):
        cp._CudaPythonKernels((9, 0), device=1)
    names = [c[0] for c in driver.calls]
    assert names.count("cuDevicePrimaryCtxRetain") == 1 and names.count("cuDevicePrimaryCtxRelease") == 1
    assert names.index("cuDevicePrimaryCtxRelease") > names.index("cuModuleLoadData")


def test_kernel_compile_error_retains_no_context(monkeypatch):
    driver = _FakeDriver()
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)

    def broken(cc):
        raise cp.KernelCompileError("NVRTC could not compile preprocess.cu")

    monkeypatch.setattr(cp, "kernel_image", broken)
    with pytest.raises(cp.KernelCompileError):
        cp._CudaPythonKernels((9, 0), device=0)
    assert not any(c[0] == "cuDevicePrimaryCtxRetain" for c in driver.calls)


def test_stream_auto_falls_back_when_the_kernel_cannot_be_loaded(tmp_path, monkeypatch):
    from edgeskd.stream.pipeline import StreamConfig, run_stream

    runner = _gpu_looking_runner(tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", _DriverRefusingTheImage())
    monkeypatch.setattr(cp, "kernel_image", lambda cc: b"// PTX newer than the driver")
    video = make_video(tmp_path / "v.mp4", n=4, w=160, h=120)
    warned: list[str] = []
    res = run_stream(StreamConfig(video=str(video), realtime=False, measure_ceiling=False), runner=runner,
                     warn=warned.append)
    assert res.stats["source"]["preprocess"] == "cpu" and res.stats["frames_processed"] == 4
    (w,) = [w for w in warned if "CUDA preprocessing" in w]
    assert "CUDA_ERROR_UNSUPPORTED_PTX_VERSION" in w and w.endswith("using CPU preprocessing") and "\n" not in w
    with pytest.raises(BackendUnavailable, match="cannot be loaded"):
        run_stream(StreamConfig(video=str(video), preprocess="cuda", measure_ceiling=False), runner=runner)


def test_pycuda_kernel_load_error_is_backend_unavailable(monkeypatch):
    _fake_pycuda(monkeypatch)
    monkeypatch.setattr(cb, "_CACHE", {})
    monkeypatch.setattr(cp, "kernel_image", lambda cc: b"// PTX newer than the driver")
    binding = cb.get_binding("pycuda", 1)
    runner = types.SimpleNamespace(metadata=META, in_dtype=np.dtype(np.float32), cu=binding,
                                   supports_cuda_preprocess=True, backend="tensorrt")
    warned: list[str] = []
    assert cp.preprocessor_for_stream(runner, "auto", warned.append) is None
    assert len(warned) == 1 and "cannot be loaded with pycuda (cuModuleLoadDataEx failed" in warned[0]
    with pytest.raises(BackendUnavailable, match="cannot be loaded with pycuda"):
        cp.preprocessor_for_stream(runner, "cuda")
    binding.close()
