"""A small CUDA adapter: device buffers, pinned host arrays, async copies, streams.

Two bindings behind one interface: **cuda-python** (``cuda.bindings.runtime``, the default: wheels
only, no nvcc needed) and **pycuda** (the alternative where it is installed: sdist-only, and it needs
nvcc to build the preprocessing kernel). The TensorRT runner and the CUDA preprocessing use only what
is here::

    cu = get_binding()                      # "auto" | "cuda-python" | "pycuda"; its device made current
    cu.make_current()                       # again before work on a thread where another device may be
    stream = cu.stream_create()
    buf = cu.malloc(nbytes)                 # DeviceBuffer: .ptr (int device pointer), .nbytes, .free()
    host = cu.host_empty((8, 5), np.float32)   # page-locked numpy array
    cu.memcpy_htod_async(buf.ptr, array, stream)
    cu.memcpy_dtoh_async(host, buf.ptr, stream)
    cu.stream_synchronize(stream)
    stream.handle                           # int cudaStream_t, e.g. for execute_async_v3

Both bindings work in the device's primary context, which is the one TensorRT and the CUDA runtime
use, so pointers and streams can be shared between them. Nothing is imported until a binding is
asked for; without a GPU, ``get_binding()`` raises BackendUnavailable saying what is missing.

cuda-python moved its modules in 12.6.1 (``cuda.cudart`` → ``cuda.bindings.runtime``, ``cuda.cuda``
→ ``cuda.bindings.driver``, ``cuda.nvrtc`` → ``cuda.bindings.nvrtc``); ``import_cuda_module`` finds
either layout, and ``native_handle`` turns a cuda-python handle object into its integer value
(``cuda.bindings.utils.get_cuda_native_handle`` where it exists; ``int(obj)`` is deprecated since
12.9.1). pycuda pushes the device's primary context; ``close()`` pops it (registered at exit,
since pycuda aborts when its context stack is not empty at interpreter shutdown).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeskd.errors import BackendUnavailable

BINDINGS = ("cuda-python", "pycuda")
# cuda-python < 12.6.1 kept driver / runtime / NVRTC at the top of the ``cuda`` package
_OLD_LAYOUT = {"driver": "cuda.cuda", "runtime": "cuda.cudart", "nvrtc": "cuda.nvrtc"}


def import_cuda_module(kind: str) -> Any:
    """cuda-python's ``driver``, ``runtime`` or ``nvrtc`` module, new layout (``cuda.bindings.*``,
    cuda-python >= 12.6.1) or old (``cuda.cuda`` / ``cuda.cudart`` / ``cuda.nvrtc``). ImportError
    when neither is installed. Importing loads no CUDA library: a missing driver or NVRTC shows at
    the first call."""
    if kind not in _OLD_LAYOUT:
        raise ValueError(f"unknown cuda-python module {kind!r}; use driver, runtime or nvrtc")
    try:
        return importlib.import_module(f"cuda.bindings.{kind}")
    except ImportError:
        pass
    try:
        return importlib.import_module(_OLD_LAYOUT[kind])
    except ImportError:
        raise ImportError(f"cuda-python is not installed (neither cuda.bindings.{kind} nor {_OLD_LAYOUT[kind]})") from None


def native_handle(obj: Any) -> int:
    """The integer value of a cuda-python handle (stream, context, pointer...); ints pass through."""
    if isinstance(obj, int):
        return obj
    getter = _native_handle_getter()
    if getter is not None:
        try:
            return int(getter(obj))
        except TypeError:   # a type without a registered getter (e.g. a plain pointer wrapper)
            pass
    return int(obj)


def _native_handle_getter() -> Callable[[Any], int] | None:
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:    # cuda-python < 12.9.1, or the old layout
        return None
    return get_cuda_native_handle


@dataclass
class CudaStream:
    handle: int                 # the cudaStream_t as an integer
    raw: Any                    # the binding's own object (kept alive)


class DeviceBuffer:
    """A device allocation; ``ptr`` is the integer device pointer. Free it, or use ``with``."""

    def __init__(self, ptr: int, nbytes: int, release: Callable[[], None], keep: Any = None) -> None:
        self.ptr = int(ptr)
        self.nbytes = int(nbytes)
        self._release: Callable[[], None] | None = release
        self._keep = keep

    def free(self) -> None:
        if self._release is not None:
            rel, self._release = self._release, None
            rel()
            self._keep = None

    def __enter__(self) -> "DeviceBuffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.free()

    def __int__(self) -> int:
        return self.ptr


def _check_host(arr: np.ndarray) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
        raise ValueError("host arrays for CUDA copies must be C-contiguous numpy arrays")
    return arr


class CudaBinding:
    """The interface; see the module docstring."""

    name = "?"

    def make_current(self) -> None: ...
    def device_count(self) -> int: ...
    def compute_capability(self, device: int = 0) -> tuple[int, int]: ...
    def device_name(self, device: int = 0) -> str: ...
    def malloc(self, nbytes: int) -> DeviceBuffer: ...
    def host_empty(self, shape: Any, dtype: Any = np.float32) -> np.ndarray: ...
    def memcpy_htod_async(self, dst_ptr: int, src: np.ndarray, stream: CudaStream) -> None: ...
    def memcpy_dtoh_async(self, dst: np.ndarray, src_ptr: int, stream: CudaStream) -> None: ...
    def memcpy_dtod_async(self, dst_ptr: int, src_ptr: int, nbytes: int, stream: CudaStream) -> None: ...
    def stream_create(self) -> CudaStream: ...
    def stream_synchronize(self, stream: CudaStream) -> None: ...
    def stream_destroy(self, stream: CudaStream) -> None: ...

    def close(self) -> None:
        """Release what the binding holds for the process (safe to call twice)."""


# -- cuda-python ---------------------------------------------------------------------------
class CudaPythonBinding(CudaBinding):
    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        try:
            rt = import_cuda_module("runtime")
        except ImportError:
            raise BackendUnavailable("cuda-python is not installed; pip install 'edgeskd[gpu-cu12]' "
                                     "(or [gpu-cu13]; see `edgeskd doctor`)") from None
        self.rt = rt
        try:
            err, n = rt.cudaGetDeviceCount()
        except RuntimeError as e:   # the CUDA driver library could not be loaded
            raise BackendUnavailable(f"no usable CUDA driver ({e}); needs an NVIDIA GPU and driver") from None
        if err != rt.cudaError_t.cudaSuccess or n < 1:
            raise BackendUnavailable(f"no usable CUDA device ({self._err_name(err)}); needs an NVIDIA GPU and a driver "
                                     "new enough for this cuda-python (13.x needs >= 580; see `edgeskd doctor`)")
        if device >= n:
            raise BackendUnavailable(f"CUDA device {device} does not exist ({n} present)")
        self.device = device
        self._use()

    def _use(self) -> None:
        """Make this binding's device current for the calling thread (the runtime API allocates and
        creates streams on the current device; another binding may have switched it)."""
        self._ok(self.rt.cudaSetDevice(self.device), "cudaSetDevice")

    def make_current(self) -> None:
        """This binding's device (its primary context) current on the calling thread: what TensorRT's
        builder, deserialization and execution use."""
        self._use()

    def _err_name(self, err: Any) -> str:
        return getattr(err, "name", str(err))

    def _ok(self, result: Any, what: str) -> Any:
        """cuda-python returns (err, *values); raise on error, return the value(s)."""
        err, *vals = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"{what} failed: {self._err_name(err)}")
        return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)

    def device_count(self) -> int:
        return int(self._ok(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        A = self.rt.cudaDeviceAttr
        major = self._ok(self.rt.cudaDeviceGetAttribute(A.cudaDevAttrComputeCapabilityMajor, device), "attr")
        minor = self._ok(self.rt.cudaDeviceGetAttribute(A.cudaDevAttrComputeCapabilityMinor, device), "attr")
        return int(major), int(minor)

    def device_name(self, device: int = 0) -> str:
        props = self._ok(self.rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name
        return name.split(b"\x00")[0].decode() if isinstance(name, bytes) else str(name)

    def malloc(self, nbytes: int) -> DeviceBuffer:
        self._use()
        ptr = self._ok(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc")
        return DeviceBuffer(native_handle(ptr), nbytes, lambda: self._ok(self.rt.cudaFree(ptr), "cudaFree"))

    def host_empty(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        """Page-locked numpy array; the pinned memory is freed when the last view of it dies."""
        dt = np.dtype(dtype)
        n = max(int(np.prod(shape)) * dt.itemsize, 1)
        self._use()
        ptr = native_handle(self._ok(self.rt.cudaMallocHost(n), "cudaMallocHost"))
        raw = (ctypes.c_byte * n).from_address(ptr)
        weakref.finalize(raw, self.rt.cudaFreeHost, ptr)
        return np.frombuffer(raw, dtype=np.uint8)[: int(np.prod(shape)) * dt.itemsize].view(dt).reshape(shape)

    def memcpy_htod_async(self, dst_ptr: int, src: np.ndarray, stream: CudaStream) -> None:
        src = _check_host(src)
        self._ok(self.rt.cudaMemcpyAsync(int(dst_ptr), src.ctypes.data, src.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.raw), "memcpy H2D")

    def memcpy_dtoh_async(self, dst: np.ndarray, src_ptr: int, stream: CudaStream) -> None:
        dst = _check_host(dst)
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, int(src_ptr), dst.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.raw), "memcpy D2H")

    def memcpy_dtod_async(self, dst_ptr: int, src_ptr: int, nbytes: int, stream: CudaStream) -> None:
        self._ok(self.rt.cudaMemcpyAsync(int(dst_ptr), int(src_ptr), int(nbytes),
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.raw), "memcpy D2D")

    def stream_create(self) -> CudaStream:
        self._use()
        s = self._ok(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        return CudaStream(native_handle(s), s)

    def stream_synchronize(self, stream: CudaStream) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream.raw), "cudaStreamSynchronize")

    def stream_destroy(self, stream: CudaStream) -> None:
        self._ok(self.rt.cudaStreamDestroy(stream.raw), "cudaStreamDestroy")


# -- pycuda -----------------------------------------------------------------------------------
class PyCudaBinding(CudaBinding):
    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        try:
            import pycuda.driver as cuda
        except ImportError:
            raise BackendUnavailable("pycuda is not installed; pip install 'edgeskd[pycuda]' (needs nvcc)") from None
        self.cuda = cuda
        try:
            cuda.init()
            n = cuda.Device.count()
        except cuda.Error as e:
            raise BackendUnavailable(f"no usable CUDA device ({e}); needs an NVIDIA GPU and driver") from None
        if n < 1 or device >= n:
            raise BackendUnavailable(f"CUDA device {device} does not exist ({n} present)")
        self.dev = cuda.Device(device)
        # The primary context is the one the CUDA runtime (and TensorRT) use. pycuda keeps a
        # per-thread context stack and aborts the process at exit if it is not empty: pop it in
        # close(), which also runs at exit.
        self.ctx: Any = self.dev.retain_primary_context()
        self.ctx.push()
        self._thread = threading.get_ident()
        self._pushes = 1           # pushes on the creating thread, popped in close()
        self.device = device
        atexit.register(self.close)

    def make_current(self) -> None:
        """Push the primary context where another (or none) is current on the calling thread. Pushes
        on the creating thread are popped in ``close``; another thread's stack ends with the thread."""
        cur = self.cuda.Context.get_current()
        if cur is not None and getattr(cur, "handle", cur) == getattr(self.ctx, "handle", self.ctx):
            return
        self.ctx.push()
        if threading.get_ident() == self._thread:
            self._pushes += 1

    def close(self) -> None:
        """Pop the primary context pushed in ``__init__`` (idempotent; the binding is unusable
        afterwards). Free this binding's buffers first: pycuda frees memory in its context."""
        ctx, self.ctx = self.ctx, None
        if ctx is None:
            return
        atexit.unregister(self.close)
        for key in [k for k, b in _CACHE.items() if b is self]:
            del _CACHE[key]
        if threading.get_ident() != self._thread:
            # the stack is per thread: only the thread that pushed can pop (pycuda's own rule)
            raise RuntimeError("PyCudaBinding.close() must run on the thread that created the binding")
        for _ in range(self._pushes):
            try:
                ctx.pop()
            except self.cuda.Error:   # already popped by someone else: nothing left to do
                break
        self._pushes = 0
        from pycuda.tools import clear_context_caches

        clear_context_caches()

    def device_count(self) -> int:
        return int(self.cuda.Device.count())

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        major, minor = self.cuda.Device(device).compute_capability()
        return int(major), int(minor)

    def device_name(self, device: int = 0) -> str:
        return str(self.cuda.Device(device).name())

    def malloc(self, nbytes: int) -> DeviceBuffer:
        alloc = self.cuda.mem_alloc(max(int(nbytes), 1))
        return DeviceBuffer(int(alloc), nbytes, alloc.free, keep=alloc)

    def host_empty(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def memcpy_htod_async(self, dst_ptr: int, src: np.ndarray, stream: CudaStream) -> None:
        self.cuda.memcpy_htod_async(int(dst_ptr), _check_host(src), stream.raw)

    def memcpy_dtoh_async(self, dst: np.ndarray, src_ptr: int, stream: CudaStream) -> None:
        self.cuda.memcpy_dtoh_async(_check_host(dst), int(src_ptr), stream.raw)

    def memcpy_dtod_async(self, dst_ptr: int, src_ptr: int, nbytes: int, stream: CudaStream) -> None:
        self.cuda.memcpy_dtod_async(int(dst_ptr), int(src_ptr), int(nbytes), stream.raw)

    def stream_create(self) -> CudaStream:
        s = self.cuda.Stream()
        return CudaStream(int(s.handle), s)

    def stream_synchronize(self, stream: CudaStream) -> None:
        stream.raw.synchronize()

    def stream_destroy(self, stream: CudaStream) -> None:
        stream.raw = None


_CACHE: dict[tuple[str, int], CudaBinding] = {}


def available_bindings() -> list[str]:
    """Bindings whose Python package is importable here (says nothing about a GPU)."""
    import importlib.util

    out = []
    if importlib.util.find_spec("cuda") is not None and (
        importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cudart") is not None
    ):
        out.append("cuda-python")
    if importlib.util.find_spec("pycuda") is not None:
        out.append("pycuda")
    return out


def get_binding(name: str = "auto", device: int = 0) -> CudaBinding:
    """The CUDA adapter: ``auto`` = cuda-python if installed, else pycuda. Cached per process; the
    binding's device is made current on the calling thread (a cached one too: another binding, or
    torch, may have switched it)."""
    if name not in ("auto", *BINDINGS):
        raise ValueError(f"unknown CUDA binding {name!r}; use auto, cuda-python or pycuda")
    names = [name] if name != "auto" else (available_bindings() or ["cuda-python"])
    errors = []
    for n in names:
        key = (n, device)
        if key in _CACHE:
            _CACHE[key].make_current()
            return _CACHE[key]
        try:
            b: CudaBinding = CudaPythonBinding(device) if n == "cuda-python" else PyCudaBinding(device)
        except BackendUnavailable as e:
            errors.append(str(e))
            continue
        _CACHE[key] = b
        return b
    raise BackendUnavailable("; ".join(errors))
