"""CUDA preprocessing: one fused kernel (``kernels/preprocess.cu``) from a uint8 frame straight into
the engine's input buffer (DESIGN.md §5).

The kernel is compiled at run time with **NVRTC** (``cuda.bindings.nvrtc``, from wheels: no nvcc
on the edge box) to a CUBIN for the GPU's own architecture, loaded and launched with the CUDA driver
API of **cuda-python**; with **pycuda** it is loaded with ``module_from_buffer`` (NVRTC output) or,
without cuda-python, compiled by pycuda's ``SourceModule`` (needs nvcc). Memory and streams come
from ``edgeskd.runtime.cuda_binding`` — the same adapter, context and stream as the TensorRT runner.

Numerics: float32 output is bit-identical to ``edgeskd.runtime.preprocess`` (same coordinate
maths in double, same float32 lerp order, no FMA contraction, IEEE division) for the same RGB
frame; float16 output is that value rounded to half. ``tests/test_cuda_preprocess.py`` compiles the
kernel on CPU (NVRTC and nvcc) and, on a GPU, compares it with the CPU path on real frames.

Compiling needs no GPU::

    ptx = compile_nvrtc(arch="compute_87")          # Jetson Orin, as PTX
    cubin = compile_nvrtc(arch="sm_90", cubin=True)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeskd.errors import BackendUnavailable, UsageError

KERNEL_PATH = Path(__file__).with_name("kernels") / "preprocess.cu"
KERNEL_F32 = "edgeskd_preprocess_f32"
KERNEL_F16 = "edgeskd_preprocess_f16"
# --fmad=false: no fused multiply-add, so the kernel rounds like numpy
NVRTC_OPTIONS = ("--fmad=false", "--std=c++17")
NVCC_OPTIONS = ("--fmad=false", "-std=c++17")
BLOCK = (32, 8, 1)


class KernelCompileError(RuntimeError):
    """The kernel source did not compile (a bug in the source, not a user error)."""


def kernel_source() -> str:
    return KERNEL_PATH.read_text(encoding="utf-8")


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailable("NVRTC is not available: pip install 'edgeskd[gpu]' (cuda-python)") from None
    return nvrtc


def _nvrtc_ok(nvrtc: Any, result: Any, what: str) -> Any:
    err, *vals = result if isinstance(result, tuple) else (result,)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise KernelCompileError(f"{what} failed: {getattr(err, 'name', err)}")
    return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)


def nvrtc_supported_archs() -> list[int]:
    nvrtc = _nvrtc()
    return [int(a) for a in _nvrtc_ok(nvrtc, nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")]


def compile_nvrtc(arch: str = "compute_75", *, cubin: bool = False, source: str | None = None) -> bytes:
    """Compile the kernel with NVRTC (no GPU needed). ``arch``: ``compute_XY`` (PTX) or ``sm_XY``
    (with ``cubin=True``). Returns PTX (NUL-terminated) or CUBIN bytes."""
    nvrtc = _nvrtc()
    src = (source if source is not None else kernel_source()).encode()
    prog = _nvrtc_ok(nvrtc, nvrtc.nvrtcCreateProgram(src, b"preprocess.cu", 0, [], []), "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in NVRTC_OPTIONS)]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _nvrtc_ok(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        # Fresh writable buffers: NVRTC writes into them, and ``b" " * n`` can be CPython's shared
        # cached one-byte object (size 1), which would corrupt every b" " in the process.
        log = bytearray(size)
        nvrtc.nvrtcGetProgramLog(prog, log)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise KernelCompileError(f"NVRTC could not compile {KERNEL_PATH.name} for {arch}: "
                                     + log.decode(errors="replace").strip()[:2000])
        if cubin:
            n = _nvrtc_ok(nvrtc, nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            out = bytearray(n)
            _nvrtc_ok(nvrtc, nvrtc.nvrtcGetCUBIN(prog, out), "nvrtcGetCUBIN")
        else:
            n = _nvrtc_ok(nvrtc, nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            out = bytearray(n)
            _nvrtc_ok(nvrtc, nvrtc.nvrtcGetPTX(prog, out), "nvrtcGetPTX")
        return bytes(out)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_nvcc(arch: str = "sm_87", *, kind: str = "cubin", nvcc: str | None = None) -> bytes:
    """Compile the kernel with nvcc (no GPU needed); ``kind`` = cubin | ptx | fatbin."""
    exe = nvcc or shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if exe is None:
        raise BackendUnavailable("nvcc not found; install the CUDA toolkit or use NVRTC (compile_nvrtc)")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / f"preprocess.{kind}"
        cmd = [exe, f"-arch={arch}", f"-{kind}", *NVCC_OPTIONS, "-o", str(out), str(KERNEL_PATH)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise KernelCompileError(f"nvcc failed ({' '.join(cmd)}): {r.stderr.strip()[:2000]}")
        return out.read_bytes()


def norm_constants(meta: Any) -> tuple[np.ndarray, np.ndarray]:
    """255*mean and 255*std as float32, computed exactly as runtime/preprocess.py does."""
    return (np.asarray(meta.mean, np.float32) * 255.0).astype(np.float32), \
        (np.asarray(meta.std, np.float32) * 255.0).astype(np.float32)


def launch_geometry(out_hw: Sequence[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    h, w = int(out_hw[0]), int(out_hw[1])
    return ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1], 1), BLOCK


# -- kernel loading / launching, one small class per binding -----------------------------------------
class _CudaPythonKernels:
    def __init__(self, cc: tuple[int, int]) -> None:
        from cuda.bindings import driver

        self.driver = driver
        try:
            self._ok(driver.cuInit(0), "cuInit")
        except Exception as e:  # noqa: BLE001 - no driver library: cuda-python raises its own loader error
            raise BackendUnavailable(f"the CUDA driver is not usable here ({e}); needs an NVIDIA GPU and driver") from None
        ctx = self._ok(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if not int(ctx):   # the runtime binding normally made the primary context current already
            dev = self._ok(driver.cuDeviceGet(0), "cuDeviceGet")
            ctx = self._ok(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
            self._ok(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        # a NUL-terminated host copy (PTX must be NUL-terminated; harmless for CUBIN), kept alive
        self._image = np.frombuffer(_image_for(cc) + b"\0", dtype=np.uint8).copy()
        self.module = self._ok(driver.cuModuleLoadData(self._image.ctypes.data), "cuModuleLoadData")
        self.fn = {
            np.dtype(np.float32): self._ok(driver.cuModuleGetFunction(self.module, KERNEL_F32.encode()), "get f32"),
            np.dtype(np.float16): self._ok(driver.cuModuleGetFunction(self.module, KERNEL_F16.encode()), "get f16"),
        }

    def _ok(self, result: Any, what: str) -> Any:
        err, *vals = result if isinstance(result, tuple) else (result,)
        if err != self.driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")
        return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)

    def launch(self, dtype: np.dtype, grid, block, stream_handle: int, args: list[np.ndarray]) -> None:
        ptrs = np.array([a.ctypes.data for a in args], dtype=np.uint64)
        self._ok(self.driver.cuLaunchKernel(
            self.fn[dtype], grid[0], grid[1], grid[2], block[0], block[1], block[2], 0,
            self.driver.CUstream(int(stream_handle)), ptrs.ctypes.data, 0,
        ), "cuLaunchKernel")


class _PyCudaKernels:
    def __init__(self, cc: tuple[int, int]) -> None:
        import pycuda.driver as cuda

        try:
            module = cuda.module_from_buffer(_image_for(cc))
        except BackendUnavailable:   # no NVRTC: let pycuda compile with nvcc
            from pycuda.compiler import SourceModule

            module = SourceModule(kernel_source(), no_extern_c=True, options=list(NVCC_OPTIONS))
        self.fn = {np.dtype(np.float32): module.get_function(KERNEL_F32),
                   np.dtype(np.float16): module.get_function(KERNEL_F16)}
        self.module = module

    def launch(self, dtype: np.dtype, grid, block, stream: Any, args: list[np.ndarray]) -> None:
        scalars = [np.uintp(a[0]) if a.dtype == np.uint64 else a.dtype.type(a[0]) for a in args]
        self.fn[dtype](*scalars, block=block, grid=grid[:2], stream=stream)


@lru_cache(maxsize=8)
def _image_for(cc: tuple[int, int]) -> bytes:
    """CUBIN for the GPU's own architecture when NVRTC knows it, else PTX for the newest it knows
    (the driver JIT-compiles PTX for newer GPUs)."""
    arch = cc[0] * 10 + cc[1]
    supported = nvrtc_supported_archs()
    if arch in supported:
        return compile_nvrtc(f"sm_{arch}", cubin=True)
    lower = [a for a in supported if a <= arch]
    if not lower:
        raise BackendUnavailable(f"this NVRTC cannot compile for compute capability {cc[0]}.{cc[1]}")
    return compile_nvrtc(f"compute_{max(lower)}")


class CudaPreprocessor:
    """uint8 RGB/BGR frames on the host → the engine's input buffer on the GPU.

    ``run(frame, crop, dst_ptr, stream)`` uploads the frame (pinned staging buffer, async copy) and
    launches the kernel on ``stream``; nothing is synchronised, so it pipelines with inference on the
    same stream. ``to_host`` is the convenience used by tests and benchmarks.
    """

    def __init__(self, meta: Any, *, binding: str = "auto", dtype: Any = np.float32, device: int = 0,
                 input_order: str = "RGB") -> None:
        from edgeskd.runtime.cuda_binding import get_binding

        self.meta = meta
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise UsageError(f"CUDA preprocessing writes float32 or float16, not {self.dtype}")
        self.cu = get_binding(binding, device)
        cc = self.cu.compute_capability(device)
        self.kernels: Any = _PyCudaKernels(cc) if self.cu.name == "pycuda" else _CudaPythonKernels(cc)
        self.out_hw = (int(meta.input_size[0]), int(meta.input_size[1]))
        self.swap = int(input_order != meta.channel_order)
        self.mean255, self.std255 = norm_constants(meta)
        self._staging: list[np.ndarray] = []
        self._dev_frames: list[Any] = []
        self._own_stream = None

    @classmethod
    def for_runner(cls, runner: Any, *, input_order: str = "RGB") -> "CudaPreprocessor":
        """Bound to a TensorRT runner: same binding, same stream, writes its input dtype."""
        self = cls(runner.metadata, binding=runner.cu.name, dtype=runner.in_dtype, input_order=input_order)
        self.runner = runner
        return self

    @property
    def image_nbytes(self) -> int:
        h, w = self.out_hw
        return 3 * h * w * self.dtype.itemsize

    def _upload(self, frame: np.ndarray, stream: Any, slot: int) -> tuple[int, int]:
        """Copy the frame into device slot ``slot`` through a pinned staging buffer; returns
        (device ptr, row pitch). One slot per image of a batch: a slot is reused only after the
        stream was synchronised (the runner does so at the end of every batch; ``run`` callers
        that reuse a slot must do the same)."""
        nbytes = frame.nbytes
        while len(self._staging) <= slot:
            self._staging.append(np.empty(0, np.uint8))
            self._dev_frames.append(None)
        if self._staging[slot].nbytes < nbytes:
            if self._dev_frames[slot] is not None:
                self.cu.stream_synchronize(stream)
                self._dev_frames[slot].free()
            self._staging[slot] = self.cu.host_empty((nbytes,), np.uint8)
            self._dev_frames[slot] = self.cu.malloc(nbytes)
        host = self._staging[slot][:nbytes]
        np.copyto(host, frame.reshape(-1))
        dev = self._dev_frames[slot]
        self.cu.memcpy_htod_async(dev.ptr, host, stream)
        return dev.ptr, frame.shape[1] * 3

    def run(self, frame: np.ndarray, crop: Sequence[int] | None, dst_ptr: int, stream: Any, slot: int = 0) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise UsageError(f"CUDA preprocessing takes uint8 HxWx3 frames, got {frame.dtype} {frame.shape}")
        H, W = frame.shape[:2]
        x, y, w, h = (int(v) for v in crop) if crop is not None else (0, 0, W, H)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
            raise UsageError(f"crop {x},{y},{w},{h} does not fit a {W}x{H} frame")
        frame = np.ascontiguousarray(frame)
        src_ptr, pitch = self._upload(frame, stream, slot)
        oh, ow = self.out_hw
        grid, block = launch_geometry(self.out_hw)
        m, s = self.mean255, self.std255
        args = [np.array([src_ptr], np.uint64), np.array([pitch], np.int32),
                *(np.array([v], np.int32) for v in (x, y, w, h)),
                np.array([int(dst_ptr)], np.uint64), np.array([ow], np.int32), np.array([oh], np.int32),
                np.array([self.swap], np.int32),
                *(np.array([v], np.float32) for v in (m[0], m[1], m[2], s[0], s[1], s[2]))]
        handle = stream.raw if self.cu.name == "pycuda" else stream.handle
        self.kernels.launch(self.dtype, grid, block, handle, args)

    def run_into_runner(self, frame: np.ndarray, crop: Sequence[int] | None, index: int) -> None:
        """Write image ``index`` of the next batch straight into the runner's input buffer."""
        r = self.runner
        self.run(frame, crop, r.input_buffer.ptr + index * self.image_nbytes, r.stream, slot=index)

    def to_host(self, frames: np.ndarray, crop: Sequence[int] | None = None) -> np.ndarray:
        """(N, H, W, 3) or (H, W, 3) uint8 → (N, 3, h, w) on the host, through the GPU."""
        batch = frames[None] if frames.ndim == 3 else frames
        if self._own_stream is None:
            self._own_stream = self.cu.stream_create()
        stream = self._own_stream
        n = batch.shape[0]
        with self.cu.malloc(n * self.image_nbytes) as out:
            for i in range(n):
                self.run(batch[i], crop, out.ptr + i * self.image_nbytes, stream, slot=i)
            host = self.cu.host_empty((n, 3, *self.out_hw), self.dtype)
            self.cu.memcpy_dtoh_async(host, out.ptr, stream)
            self.cu.stream_synchronize(stream)
            return np.array(host)

    def close(self) -> None:
        for d in self._dev_frames:
            if d is not None:
                d.free()
        self._dev_frames, self._staging = [], []
        if self._own_stream is not None:
            self.cu.stream_destroy(self._own_stream)
            self._own_stream = None
