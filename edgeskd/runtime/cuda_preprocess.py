"""CUDA preprocessing: one fused kernel (``kernels/preprocess.cu``) from a decoded frame straight into
the engine's input buffer, on the inference stream — crop, bilinear resize, channel order and
normalisation as ``edgeskd.runtime.preprocess`` does them on the CPU.

The kernel is compiled at run time with **NVRTC** (cuda-python's ``nvrtc``, from wheels: no nvcc
on the edge box) to a CUBIN for the GPU's own architecture; where NVRTC is missing (it is an
optional part of cuda-python, and its absence shows only at the first call) **nvcc** compiles it
instead, and with neither the error says so (``stream --preprocess auto`` then falls back to CPU
preprocessing with a one-line warning: ``preprocessor_for_stream``). The image is loaded and launched
with the CUDA driver API of **cuda-python**, or with pycuda's ``module_from_buffer``. Memory and
streams come from ``edgeskd.runtime.cuda_binding`` — the same adapter, device, context and stream
as the TensorRT runner.

Two inputs: a uint8 RGB/BGR frame (``run``), or a decoded PyAV frame (``run_frame``): 8-bit planar
YUV frames are uploaded as their Y/U/V planes (half the bytes of RGB for 4:2:0) and converted on the
GPU with the CPU stream path's own YUV→RGB (``yuv_to_rgb_coeffs`` in ``runtime/preprocess.py``: the
frame's matrix and range, float32, rounded and clipped like numpy), so CPU and CUDA stream paths
give the same numbers; other pixel formats go through ``to_ndarray("rgb24")``, as on the CPU path.

Numerics: float32 output is bit-identical to ``edgeskd.runtime.preprocess`` (same coordinate
maths in double, same float32 lerp order, no FMA contraction, IEEE division) for the same RGB
frame, and to ``edgeskd.stream.frames.FramePreprocessor`` for the same YUV frame; float16 output is
that value rounded to half. ``tests/test_cuda_preprocess.py`` compiles the kernel on CPU (NVRTC and
nvcc), checks its arithmetic bit for bit on the host, and on a GPU compares it with the CPU paths on
real decoded frames.

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
from typing import Any, Callable, Sequence

import numpy as np

from edgeskd.errors import BackendUnavailable, UsageError
from edgeskd.runtime.preprocess import FAST_FORMATS, yuv_to_rgb_coeffs

KERNEL_PATH = Path(__file__).with_name("kernels") / "preprocess.cu"
KERNEL_F32 = "edgeskd_preprocess_f32"
KERNEL_F16 = "edgeskd_preprocess_f16"
KERNEL_YUV_F32 = "edgeskd_preprocess_yuv_f32"
KERNEL_YUV_F16 = "edgeskd_preprocess_yuv_f16"
KERNELS = (KERNEL_F32, KERNEL_F16, KERNEL_YUV_F32, KERNEL_YUV_F16)
# --fmad=false: no fused multiply-add, so the kernel rounds like numpy
NVRTC_OPTIONS = ("--fmad=false", "--std=c++17")
NVCC_OPTIONS = ("--fmad=false", "-std=c++17")
BLOCK = (32, 8, 1)


class KernelCompileError(RuntimeError):
    """The kernel source did not compile (a bug in the source, not a user error)."""


def kernel_source() -> str:
    return KERNEL_PATH.read_text(encoding="utf-8")


def _nvrtc():
    """cuda-python's NVRTC module, checked usable: importing it loads nothing, so a missing
    libnvrtc would otherwise surface at the first compile as a RuntimeError from cuda.pathfinder
    (or "Failed to dlopen libnvrtc" before cuda-python 12.9)."""
    from edgeskd.runtime.cuda_binding import import_cuda_module

    try:
        nvrtc = import_cuda_module("nvrtc")
    except ImportError:
        raise BackendUnavailable("NVRTC is not available: cuda-python is not installed "
                                 "(pip install 'edgeskd[gpu-cu12]' or '[gpu-cu13]')") from None
    try:
        result = nvrtc.nvrtcVersion()
    except RuntimeError as e:   # DynamicLibNotFoundError is a RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendUnavailable(
            f"NVRTC is not available ({first}); install it (pip install nvidia-cuda-nvrtc-cu12 for cuda-python "
            "12.x — which finds that wheel from 12.8 on —, nvidia-cuda-nvrtc for 13.x; on Jetson set "
            "CUDA_HOME=/usr/local/cuda)") from None
    if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise BackendUnavailable(f"NVRTC is not usable (nvrtcVersion: {getattr(result[0], 'name', result[0])})")
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


def find_nvcc() -> str | None:
    default = Path("/usr/local/cuda/bin/nvcc")
    return shutil.which("nvcc") or (str(default) if default.exists() else None)


def compile_nvcc(arch: str = "sm_87", *, kind: str = "cubin", nvcc: str | None = None) -> bytes:
    """Compile the kernel with nvcc (no GPU needed); ``kind`` = cubin | ptx | fatbin."""
    exe = nvcc or find_nvcc()
    if exe is None:
        raise BackendUnavailable("nvcc not found; install the CUDA toolkit or use NVRTC (compile_nvrtc)")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / f"preprocess.{kind}"
        cmd = [exe, f"-arch={arch}", f"-{kind}", *NVCC_OPTIONS, "-o", str(out), str(KERNEL_PATH)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise KernelCompileError(f"nvcc failed ({' '.join(cmd)}): {r.stderr.strip()[:2000]}")
        return out.read_bytes()


@lru_cache(maxsize=4)
def nvcc_archs(nvcc: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(real sm_XY, virtual compute_XY) architectures this nvcc can target."""
    def ask(flag: str) -> tuple[int, ...]:
        r = subprocess.run([nvcc, flag], capture_output=True, text=True, timeout=60)
        return tuple(sorted(int(t.split("_")[1]) for t in r.stdout.split() if t.split("_")[-1].isdigit()))

    return ask("--list-gpu-code"), ask("--list-gpu-arch")


def _nvrtc_image(cc: tuple[int, int]) -> bytes:
    arch = cc[0] * 10 + cc[1]
    supported = nvrtc_supported_archs()
    if arch in supported:
        return compile_nvrtc(f"sm_{arch}", cubin=True)
    lower = [a for a in supported if a <= arch]
    if not lower:
        raise BackendUnavailable(f"this NVRTC cannot compile for compute capability {cc[0]}.{cc[1]}")
    return compile_nvrtc(f"compute_{max(lower)}")


def _nvcc_image(cc: tuple[int, int]) -> bytes:
    exe = find_nvcc()
    if exe is None:
        raise BackendUnavailable("nvcc is not installed either")
    arch = cc[0] * 10 + cc[1]
    real, virtual = nvcc_archs(exe)
    if arch in real:
        return compile_nvcc(f"sm_{arch}", kind="cubin", nvcc=exe)
    lower = [a for a in virtual if a <= arch]
    if not lower:
        raise BackendUnavailable(f"{exe} cannot compile for compute capability {cc[0]}.{cc[1]}")
    return compile_nvcc(f"compute_{max(lower)}", kind="ptx", nvcc=exe) + b"\0"   # PTX loads NUL-terminated


@lru_cache(maxsize=8)
def kernel_image(cc: tuple[int, int]) -> bytes:
    """CUBIN for the GPU's own architecture, else PTX for the newest architecture below it (the
    driver JIT-compiles PTX for newer GPUs): NVRTC first, nvcc where NVRTC is missing. Only
    successes are cached."""
    try:
        return _nvrtc_image(cc)
    except BackendUnavailable as no_nvrtc:
        try:
            return _nvcc_image(cc)
        except BackendUnavailable as no_nvcc:
            raise BackendUnavailable(f"cannot compile the CUDA preprocessing kernel: {no_nvrtc}; {no_nvcc}") from None


def norm_constants(meta: Any) -> tuple[np.ndarray, np.ndarray]:
    """255*mean and 255*std as float32, computed exactly as runtime/preprocess.py does."""
    return (np.asarray(meta.mean, np.float32) * 255.0).astype(np.float32), \
        (np.asarray(meta.std, np.float32) * 255.0).astype(np.float32)


def launch_geometry(out_hw: Sequence[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    h, w = int(out_hw[0]), int(out_hw[1])
    return ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1], 1), BLOCK


# -- kernel loading / launching, one small class per binding -----------------------------------------
class _CudaPythonKernels:
    """The kernels in device ``device``'s primary context (the one the runtime API, the binding and
    TensorRT use), loaded with the driver API. A kernel the driver cannot load (e.g. PTX newer than
    the driver) is a BackendUnavailable, and the context retained for it is released again."""

    def __init__(self, cc: tuple[int, int], device: int = 0) -> None:
        from edgeskd.runtime.cuda_binding import import_cuda_module

        try:
            driver = import_cuda_module("driver")
        except ImportError:
            raise BackendUnavailable("cuda-python is not installed (pip install 'edgeskd[gpu-cu12]')") from None
        self.driver = driver
        self.module = None
        self.ctx = None
        try:
            self._ok(driver.cuInit(0), "cuInit")
        except Exception as e:  # noqa: BLE001 - no driver library: cuda-python raises its own loader error
            raise BackendUnavailable(f"the CUDA driver is not usable here ({e}); needs an NVIDIA GPU and driver") from None
        self.dev = self._ok(driver.cuDeviceGet(int(device)), "cuDeviceGet")
        # compiled before the context is retained: a compile error leaves nothing to release. A
        # NUL-terminated host copy (PTX must be NUL-terminated; harmless for CUBIN), kept alive.
        self._image = np.frombuffer(kernel_image(cc) + b"\0", dtype=np.uint8).copy()
        self.ctx = self._ok(driver.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
        try:
            self._ok(driver.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
            self.module = self._ok(driver.cuModuleLoadData(self._image.ctypes.data), "cuModuleLoadData")
            self.fn = {name: self._ok(driver.cuModuleGetFunction(self.module, name.encode()), name) for name in KERNELS}
        except BaseException as e:
            self._release(quiet=True)
            if isinstance(e, RuntimeError):
                raise BackendUnavailable(f"the CUDA preprocessing kernel cannot be loaded ({e}); update the NVIDIA "
                                         "driver (PTX newer than the driver is refused) or use --preprocess cpu") from None
            raise

    def _release(self, quiet: bool = False) -> None:
        """Unload the module, then release the retained primary context (each once; ``quiet``: on a
        failure path, where the first error is the one to report)."""
        module, self.module = self.module, None
        ctx, self.ctx = self.ctx, None
        calls = []
        if module is not None:
            calls.append(("cuModuleUnload", lambda: self.driver.cuModuleUnload(module)))
        if ctx is not None:
            calls.append(("cuDevicePrimaryCtxRelease", lambda: self.driver.cuDevicePrimaryCtxRelease(self.dev)))
        first: RuntimeError | None = None
        for what, call in calls:
            try:
                self._ok(call(), what)
            except RuntimeError as e:
                first = first or e
        if first is not None and not quiet:
            raise first

    def _ok(self, result: Any, what: str) -> Any:
        err, *vals = result if isinstance(result, tuple) else (result,)
        if err != self.driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")
        return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)

    def launch(self, name: str, grid, block, stream: Any, args: list[np.ndarray]) -> None:
        """``stream``: the binding's CudaStream. ``args``: one 1-element numpy array per kernel
        parameter, in order (the driver reads each value through a pointer)."""
        ptrs = np.array([a.ctypes.data for a in args], dtype=np.uint64)
        self._ok(self.driver.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")   # another device may be current
        self._ok(self.driver.cuLaunchKernel(
            self.fn[name], grid[0], grid[1], grid[2], block[0], block[1], block[2], 0,
            self.driver.CUstream(int(stream.handle)), ptrs.ctypes.data, 0,
        ), "cuLaunchKernel")

    def close(self) -> None:
        self._release()


class _PyCudaKernels:
    """The kernels in the context pycuda's binding pushed (the device's primary context). A kernel
    the driver cannot load is a BackendUnavailable (pycuda raises its own ``pycuda.driver.Error``)."""

    def __init__(self, cc: tuple[int, int], device: int = 0) -> None:
        import pycuda.driver as cuda

        image = kernel_image(cc)   # NVRTC, or nvcc without it
        try:
            self.module = cuda.module_from_buffer(image)
            self.fn = {name: self.module.get_function(name) for name in KERNELS}
        except cuda.Error as e:
            self.module, self.fn = None, {}
            raise BackendUnavailable(f"the CUDA preprocessing kernel cannot be loaded with pycuda ({e}); update the "
                                     "NVIDIA driver (PTX newer than the driver is refused) or use --preprocess cpu") from None

    def launch(self, name: str, grid, block, stream: Any, args: list[np.ndarray]) -> None:
        scalars = [np.uintp(a[0]) if a.dtype == np.uint64 else a.dtype.type(a[0]) for a in args]
        self.fn[name](*scalars, block=block, grid=grid[:2], stream=stream.raw)

    def close(self) -> None:
        self.module = None
        self.fn = {}


class CudaPreprocessor:
    """uint8 frames on the host → the engine's input buffer on the GPU.

    ``run(rgb, crop, dst_ptr, stream)`` takes a uint8 HxWx3 RGB/BGR array; ``run_frame(frame, ...)``
    a decoded PyAV frame (8-bit planar YUV converted on the GPU exactly as the CPU stream path does).
    Both upload through a pinned staging buffer (async copy) and launch the kernel on ``stream``;
    nothing is synchronised, so it pipelines with inference on the same stream. ``to_host`` /
    ``frames_to_host`` are the conveniences used by tests and benchmarks. ``close()`` frees the
    buffers and the kernel module (also on ``with``).
    """

    def __init__(self, meta: Any, *, binding: str = "auto", dtype: Any = np.float32, device: int = 0,
                 input_order: str = "RGB") -> None:
        from edgeskd.runtime.cuda_binding import get_binding

        self.meta = meta
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise UsageError(f"CUDA preprocessing writes float32 or float16, not {self.dtype}")
        self._staging: list[np.ndarray] = []
        self._dev_frames: list[Any] = []
        self._own_stream = None
        self.kernels: Any = None
        self.cu = get_binding(binding, device)
        self.device = int(getattr(self.cu, "device", device))
        cc = self.cu.compute_capability(self.device)
        kernels = _PyCudaKernels if self.cu.name == "pycuda" else _CudaPythonKernels
        self.kernels = kernels(cc, self.device)
        self.out_hw = (int(meta.input_size[0]), int(meta.input_size[1]))
        self.swap = int(input_order != meta.channel_order)
        self.mean255, self.std255 = norm_constants(meta)
        self._suffix = "f32" if self.dtype == np.dtype(np.float32) else "f16"

    @classmethod
    def for_runner(cls, runner: Any, *, input_order: str = "RGB") -> "CudaPreprocessor":
        """Bound to a TensorRT runner: same binding, same device, same stream, writes its input dtype."""
        self = cls(runner.metadata, binding=runner.cu.name, dtype=runner.in_dtype,
                   device=int(getattr(runner.cu, "device", 0)), input_order=input_order)
        self.runner = runner
        return self

    @property
    def image_nbytes(self) -> int:
        h, w = self.out_hw
        return 3 * h * w * self.dtype.itemsize

    def _upload(self, parts: Sequence[np.ndarray], stream: Any, slot: int) -> list[int]:
        """Copy ``parts`` (uint8 arrays) back to back into device slot ``slot`` through a pinned
        staging buffer; returns each part's device pointer. One slot per image of a batch: a slot
        is reused only after the stream was synchronised (the runner does so at the end of every
        batch; ``run`` callers that reuse a slot must do the same)."""
        self.cu.make_current()     # pycuda allocates in the current context; the runtime API on the current device
        sizes = [p.nbytes for p in parts]
        nbytes = sum(sizes)
        while len(self._staging) <= slot:
            self._staging.append(np.empty(0, np.uint8))
            self._dev_frames.append(None)
        if self._staging[slot].nbytes < nbytes:
            if self._dev_frames[slot] is not None:
                self.cu.stream_synchronize(stream)
                self._dev_frames[slot].free()
            self._staging[slot] = self.cu.host_empty((nbytes,), np.uint8)
            self._dev_frames[slot] = self.cu.malloc(nbytes)
        host = self._staging[slot]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        for part, a, b in zip(parts, offsets[:-1], offsets[1:]):
            np.copyto(host[a:b], part.reshape(-1))
        dev = self._dev_frames[slot]
        self.cu.memcpy_htod_async(dev.ptr, host[:nbytes], stream)
        return [dev.ptr + int(a) for a in offsets[:-1]]

    def _tail_args(self, dst_ptr: int) -> list[np.ndarray]:
        oh, ow = self.out_hw
        m, s = self.mean255, self.std255
        return [np.array([int(dst_ptr)], np.uint64), np.array([ow], np.int32), np.array([oh], np.int32),
                np.array([self.swap], np.int32),
                *(np.array([v], np.float32) for v in (m[0], m[1], m[2], s[0], s[1], s[2]))]

    def run(self, frame: np.ndarray, crop: Sequence[int] | None, dst_ptr: int, stream: Any, slot: int = 0) -> None:
        """A uint8 HxWx3 RGB (``input_order``) array → one image at ``dst_ptr``, on ``stream``."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise UsageError(f"CUDA preprocessing takes uint8 HxWx3 frames, got {frame.dtype} {frame.shape}")
        x, y, w, h = _check_crop(crop, frame.shape[1], frame.shape[0])
        frame = np.ascontiguousarray(frame)
        (src_ptr,) = self._upload([frame], stream, slot)
        args = [np.array([src_ptr], np.uint64), np.array([frame.shape[1] * 3], np.int32),
                *(np.array([v], np.int32) for v in (x, y, w, h)), *self._tail_args(dst_ptr)]
        grid, block = launch_geometry(self.out_hw)
        self.kernels.launch(f"edgeskd_preprocess_{self._suffix}", grid, block, stream, args)

    def run_frame(self, frame: Any, crop: Sequence[int] | None, dst_ptr: int, stream: Any, slot: int = 0,
                  rgb: np.ndarray | None = None) -> None:
        """A decoded PyAV frame → one image at ``dst_ptr``. 8-bit planar YUV (the CPU stream path's
        fast formats): planes uploaded, converted on the GPU with the CPU path's coefficients and
        rounding, so the result equals ``FramePreprocessor`` bit for bit (float32). Other formats:
        ``rgb`` if given, else ``frame.to_ndarray("rgb24")`` — what the CPU path does for them."""
        fast = FAST_FORMATS.get(frame.format.name)
        if fast is None:
            self.run(rgb if rgb is not None else frame.to_ndarray(format="rgb24"), crop, dst_ptr, stream, slot)
            return
        sx, sy, full_fmt = fast
        W, H = frame.width, frame.height
        x, y, w, h = _check_crop(crop, W, H)
        dims = [(W, H), ((W + (1 << sx) - 1) >> sx, (H + (1 << sy) - 1) >> sy)]
        planes = [_plane_rows(frame.planes[i], dims[min(i, 1)][1]) for i in range(3)]
        ptrs = self._upload(planes, stream, slot)
        coeffs = yuv_to_rgb_coeffs(getattr(frame, "colorspace", 2), getattr(frame, "color_range", 0), full_fmt)
        args = [a for ptr, p in zip(ptrs, planes) for a in (np.array([ptr], np.uint64), np.array([p.shape[1]], np.int32))]
        args += [np.array([sx], np.int32), np.array([sy], np.int32), *(np.array([c], np.float32) for c in coeffs),
                 *(np.array([v], np.int32) for v in (x, y, w, h)), *self._tail_args(dst_ptr)]
        grid, block = launch_geometry(self.out_hw)
        self.kernels.launch(f"edgeskd_preprocess_yuv_{self._suffix}", grid, block, stream, args)

    def run_into_runner(self, frame: np.ndarray, crop: Sequence[int] | None, index: int) -> None:
        """Write image ``index`` of the next batch straight into the runner's input buffer."""
        r = self.runner
        self.run(frame, crop, r.input_buffer.ptr + index * self.image_nbytes, r.stream, slot=index)

    def run_frame_into_runner(self, frame: Any, crop: Sequence[int] | None, index: int,
                              rgb: np.ndarray | None = None) -> None:
        """``run_frame`` into image ``index`` of the runner's next batch."""
        r = self.runner
        self.run_frame(frame, crop, r.input_buffer.ptr + index * self.image_nbytes, r.stream, slot=index, rgb=rgb)

    def _through_gpu(self, n: int, write: Callable[[int, int, Any], None]) -> np.ndarray:
        if self._own_stream is None:
            self._own_stream = self.cu.stream_create()
        stream = self._own_stream
        with self.cu.malloc(n * self.image_nbytes) as out:
            for i in range(n):
                write(i, out.ptr + i * self.image_nbytes, stream)
            host = self.cu.host_empty((n, 3, *self.out_hw), self.dtype)
            self.cu.memcpy_dtoh_async(host, out.ptr, stream)
            self.cu.stream_synchronize(stream)
            return np.array(host)

    def to_host(self, frames: np.ndarray, crop: Sequence[int] | None = None) -> np.ndarray:
        """(N, H, W, 3) or (H, W, 3) uint8 → (N, 3, h, w) on the host, through the GPU."""
        batch = frames[None] if frames.ndim == 3 else frames
        return self._through_gpu(batch.shape[0], lambda i, ptr, s: self.run(batch[i], crop, ptr, s, slot=i))

    def frames_to_host(self, frames: Sequence[Any], crop: Sequence[int] | None = None) -> np.ndarray:
        """Decoded PyAV frames → (N, 3, h, w) on the host, through ``run_frame``."""
        return self._through_gpu(len(frames), lambda i, ptr, s: self.run_frame(frames[i], crop, ptr, s, slot=i))

    def close(self) -> None:
        for d in self._dev_frames:
            if d is not None:
                d.free()
        self._dev_frames, self._staging = [], []
        if self._own_stream is not None:
            self.cu.stream_destroy(self._own_stream)
            self._own_stream = None
        if self.kernels is not None:
            self.kernels.close()
            self.kernels = None

    def __enter__(self) -> "CudaPreprocessor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_crop(crop: Sequence[int] | None, W: int, H: int) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in crop) if crop is not None else (0, 0, W, H)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise UsageError(f"crop {x},{y},{w},{h} does not fit a {W}x{H} frame")
    return x, y, w, h


def _plane_rows(plane: Any, height: int) -> np.ndarray:
    """A PyAV plane as (height, line_size) uint8 rows (the padding past the width included)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height]


def preprocessor_for_stream(runner: Any, mode: str, warn: Callable[[str], None] | None = None) -> CudaPreprocessor | None:
    """The stream's ``--preprocess`` choice: ``cpu`` → None; ``cuda`` → a CudaPreprocessor bound to
    the runner, or the error that prevents it; ``auto`` → one when the runner is on a GPU and the
    kernel can be built and loaded, else None — with one warning line when a GPU runner could not
    use it (no NVRTC and no nvcc, a binding problem...)."""
    if mode not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--preprocess {mode!r} must be auto, cpu or cuda")
    if mode == "cpu":
        return None
    if not getattr(runner, "supports_cuda_preprocess", False):
        if mode == "cuda":
            raise BackendUnavailable(
                f"--preprocess cuda needs a GPU runner (a TensorRT .engine); {runner.backend} runs on the CPU — "
                "use --preprocess cpu")
        return None
    try:
        return CudaPreprocessor.for_runner(runner)
    except (BackendUnavailable, KernelCompileError) as e:
        if mode == "cuda":
            raise
        if warn is not None:
            warn(f"CUDA preprocessing is not available ({e}); using CPU preprocessing")
        return None
