"""The fused CUDA preprocessing kernel: compiles on CPU-only machines (NVRTC and nvcc), its arithmetic
matches the CPU paths bit for bit (the same source built for the host: RGB input vs
runtime/preprocess.py, YUV planes vs the CPU stream path's FramePreprocessor on decoded frames), and
on a GPU the real kernel matches the CPU paths on real video frames."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeskd.runtime.preprocess import preprocess_for
from helpers_stream import META, decode_all, endo_frame, make_video

cp = pytest.importorskip("edgeskd.runtime.cuda_preprocess")


def _has_nvrtc() -> bool:
    try:
        cp._nvrtc()
        return True
    except Exception:  # noqa: BLE001
        return False


needs_nvrtc = pytest.mark.skipif(not _has_nvrtc(), reason="cuda-python (NVRTC) not installed")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@needs_nvrtc
@pytest.mark.parametrize("arch,cubin", [("compute_75", False), ("compute_87", False), ("sm_87", True), ("sm_90", True)])
def test_kernel_compiles_with_nvrtc_on_cpu(arch, cubin):
    image = cp.compile_nvrtc(arch, cubin=cubin)
    if cubin:
        assert image[:4] == b"\x7fELF"
    else:
        ptx = image.decode(errors="replace")
        assert f".target sm_{arch.split('_')[1]}" in ptx
        assert ".entry edgeskd_preprocess_f32" in ptx and ".entry edgeskd_preprocess_f16" in ptx
        assert "cvt.rn.f16.f32" in ptx
        assert "fma." not in ptx          # --fmad=false and explicit _rn intrinsics: numpy's rounding
    assert cp.KERNEL_F32.encode() in image and cp.KERNEL_F16.encode() in image


@needs_nvrtc
def test_nvrtc_reports_compile_errors():
    with pytest.raises(cp.KernelCompileError, match="NVRTC could not compile"):
        cp.compile_nvrtc("compute_75", source=cp.kernel_source() + "\n this is not C++;\n")


@needs_nvcc
@pytest.mark.parametrize("arch,kind", [("sm_87", "cubin"), ("sm_75", "ptx")])
def test_kernel_compiles_with_nvcc_on_cpu(arch, kind):
    image = cp.compile_nvcc(arch, kind=kind)
    assert cp.KERNEL_F32.encode() in image and len(image) > 1000


# -- the kernel's arithmetic, built for the host -------------------------------------------------------
_HARNESS = r"""
#include <math.h>
#include <cmath>
#include <algorithm>
#include <cstddef>
using std::min;
using std::floor;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
struct edgeskd_dim3 { int x, y, z; };
static edgeskd_dim3 blockIdx, threadIdx, blockDim;
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
#define EDGESKD_HOST_EMULATION 1
#include "KERNEL"

extern "C" void run(int f16, const unsigned char* src, int pitch, int cx, int cy, int cw, int ch,
                    void* dst, int ow, int oh, int swap, const float* m, const float* s) {
    blockDim = {32, 8, 1};
    for (int by = 0; by < (oh + 7) / 8; ++by)
      for (int bx = 0; bx < (ow + 31) / 32; ++bx)
        for (int ty = 0; ty < 8; ++ty)
          for (int tx = 0; tx < 32; ++tx) {
            blockIdx = {bx, by, 0}; threadIdx = {tx, ty, 0};
            if (f16) edgeskd_preprocess_f16(src, pitch, cx, cy, cw, ch, (unsigned short*)dst, ow, oh, swap,
                                            m[0], m[1], m[2], s[0], s[1], s[2]);
            else edgeskd_preprocess_f32(src, pitch, cx, cy, cw, ch, (float*)dst, ow, oh, swap,
                                        m[0], m[1], m[2], s[0], s[1], s[2]);
          }
}

extern "C" void run_yuv(int f16, const unsigned char* yp, int ypitch, const unsigned char* up, int upitch,
                        const unsigned char* vp, int vpitch, int sx, int sy, const float* k,
                        int cx, int cy, int cw, int ch, void* dst, int ow, int oh, int swap,
                        const float* m, const float* s) {
    blockDim = {32, 8, 1};
    for (int by = 0; by < (oh + 7) / 8; ++by)
      for (int bx = 0; bx < (ow + 31) / 32; ++bx)
        for (int ty = 0; ty < 8; ++ty)
          for (int tx = 0; tx < 32; ++tx) {
            blockIdx = {bx, by, 0}; threadIdx = {tx, ty, 0};
            if (f16) edgeskd_preprocess_yuv_f16(yp, ypitch, up, upitch, vp, vpitch, sx, sy,
                                                k[0], k[1], k[2], k[3], k[4], k[5], cx, cy, cw, ch,
                                                (unsigned short*)dst, ow, oh, swap, m[0], m[1], m[2], s[0], s[1], s[2]);
            else edgeskd_preprocess_yuv_f32(yp, ypitch, up, upitch, vp, vpitch, sx, sy,
                                            k[0], k[1], k[2], k[3], k[4], k[5], cx, cy, cw, ch,
                                            (float*)dst, ow, oh, swap, m[0], m[1], m[2], s[0], s[1], s[2]);
          }
}
"""


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler for the host build of the kernel")
    d = tmp_path_factory.mktemp("hostkernel")
    src = d / "harness.cpp"
    src.write_text(_HARNESS.replace("KERNEL", str(cp.KERNEL_PATH)))
    lib = d / "libpre.so"
    r = subprocess.run([cxx, "-O2", "-std=c++17", "-ffp-contract=off", "-fPIC", "-shared", str(src), "-o", str(lib)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"host build of the kernel failed: {r.stderr[:400]}")
    so = ctypes.CDLL(str(lib))
    so.run.restype = None
    so.run_yuv.restype = None
    return so


@pytest.fixture(scope="module")
def host_kernel(host_lib):
    so = host_lib

    def run(frame: np.ndarray, meta, crop=None, f16=False, input_order="RGB"):
        H, W = frame.shape[:2]
        x, y, w, h = crop if crop is not None else (0, 0, W, H)
        oh, ow = meta.input_size
        out = np.zeros((3, oh, ow), np.float16 if f16 else np.float32)
        m, s = cp.norm_constants(meta)
        frame = np.ascontiguousarray(frame)
        P = ctypes.c_void_p
        so.run(int(f16), frame.ctypes.data_as(P), W * 3, x, y, w, h, out.ctypes.data_as(P), ow, oh,
               int(input_order != meta.channel_order), m.ctypes.data_as(P), s.ctypes.data_as(P))
        return out

    return run


@pytest.mark.parametrize("size,crop,order,out_hw", [
    ((160, 120), None, "RGB", (32, 32)),
    ((641, 479), (40, 3, 555, 470), "BGR", (32, 48)),     # odd frame, crop, channel swap, non-square
    ((96, 144), (0, 10, 96, 120), "RGB", (128, 128)),     # upscaling
])
def test_kernel_arithmetic_matches_cpu_path_bit_for_bit(host_kernel, size, crop, order, out_hw):
    meta = META.replace(channel_order=order, input_size=list(out_hw))
    frame = endo_frame(*size, 3)
    ref = preprocess_for(meta, frame, crop=crop)[0]
    np.testing.assert_array_equal(host_kernel(frame, meta, crop), ref)
    half = host_kernel(frame, meta, crop, f16=True)
    np.testing.assert_array_equal(half, ref.astype(np.float16))


@pytest.fixture(scope="module")
def host_kernel_yuv(host_lib):
    """The YUV entry point on the host, fed the way CudaPreprocessor.run_frame feeds the GPU."""
    from edgeskd.runtime.preprocess import FAST_FORMATS, yuv_to_rgb_coeffs

    def run(frame, meta, crop=None, f16=False, input_order="RGB"):
        sx, sy, full = FAST_FORMATS[frame.format.name]
        W, H = frame.width, frame.height
        x, y, w, h = crop if crop is not None else (0, 0, W, H)
        ch = (H + (1 << sy) - 1) >> sy
        planes = [cp._plane_rows(frame.planes[i], H if i == 0 else ch).copy() for i in range(3)]
        k = np.array(yuv_to_rgb_coeffs(frame.colorspace, frame.color_range, full), np.float32)
        oh, ow = meta.input_size
        out = np.zeros((3, oh, ow), np.float16 if f16 else np.float32)
        m, s = cp.norm_constants(meta)
        P = ctypes.c_void_p
        host_lib.run_yuv(int(f16), *[a for pl in planes for a in (pl.ctypes.data_as(P), pl.shape[1])], sx, sy,
                         k.ctypes.data_as(P), x, y, w, h, out.ctypes.data_as(P), ow, oh,
                         int(input_order != meta.channel_order), m.ctypes.data_as(P), s.ctypes.data_as(P))
        return out

    return run


def _decoded_frames(path):
    import av

    with av.open(str(path)) as c:
        return list(c.decode(video=0))


@pytest.mark.parametrize("pix_fmt,size,crop,order,out_hw", [
    ("yuv420p", (320, 240), (40, 0, 240, 240), "RGB", (32, 32)),
    ("yuv420p", (160, 120), None, "BGR", (128, 96)),            # upscaling, channel swap
    ("yuv444p", (161, 121), (3, 5, 150, 111), "RGB", (48, 32)),  # odd size, no chroma subsampling
    ("yuv422p", (200, 100), (10, 10, 180, 80), "BGR", (40, 40)),
])
def test_yuv_kernel_arithmetic_matches_cpu_stream_path_bit_for_bit(tmp_path, host_kernel_yuv, pix_fmt, size, crop,
                                                                  order, out_hw):
    """The CUDA stream path converts YUV on the GPU with the CPU stream path's own maths: the same
    float32 numbers as FramePreprocessor (not swscale's rgb24, which differs by a few levels)."""
    from edgeskd.stream.frames import FramePreprocessor

    video = make_video(tmp_path / "v.mp4", n=3, w=size[0], h=size[1], pix_fmt=pix_fmt)
    frames = _decoded_frames(video)
    assert frames and frames[0].format.name == pix_fmt
    meta = META.replace(channel_order=order, input_size=list(out_hw))
    cpu = FramePreprocessor(meta)
    for f in frames:
        ref = cpu.one(f, crop)
        np.testing.assert_array_equal(host_kernel_yuv(f, meta, crop), ref)
        np.testing.assert_array_equal(host_kernel_yuv(f, meta, crop, f16=True), ref.astype(np.float16))
    # what the old CUDA stream path fed the kernel (swscale's rgb24) is not the CPU path's RGB
    rgb = frames[0].to_ndarray(format="rgb24")
    swscale = preprocess_for(meta, rgb, crop=crop)[0]
    assert np.abs(swscale - cpu.one(frames[0], crop)).max() > 0


# -- on a GPU: the real kernel vs the CPU path on decoded video frames --------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cuda_path_matches_cpu_path_on_real_frames(tmp_path, dtype):
    """Tolerance: float32 1e-5 absolute (the arithmetic is designed to be bit-identical; the bound
    allows a different libm floor/convert path), float16 one half-precision step (2^-10 relative)."""
    video = make_video(tmp_path / "v.mp4", n=4, w=640, h=360)
    frames = np.stack(decode_all(video))
    meta = META.replace(input_size=[128, 128], channel_order="BGR")
    pre = cp.CudaPreprocessor(meta, dtype=dtype)
    try:
        for crop in (None, (100, 10, 430, 340)):
            got = pre.to_host(frames, crop)
            ref = preprocess_for(meta, frames, crop=crop)
            if dtype == np.float32:
                np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
            else:
                np.testing.assert_allclose(got.astype(np.float32), ref, rtol=2 ** -10, atol=2 ** -14)
    finally:
        pre.close()


@pytest.mark.gpu
def test_stream_cuda_path_matches_cpu_path_end_to_end(tmp_path, cli):
    """TensorRT engine + the kernel writing into its input buffer, vs ONNX Runtime + the numpy
    preprocessing, on the same decoded frames: logits within 1e-3. Then the CLI with
    --preprocess cuda."""
    pytest.importorskip("tensorrt")
    from edgeskd.engine.tensorrt_build import build_tensorrt_engine
    from edgeskd.runtime.loader import load_runner
    from helpers_stream import make_onnx

    onnx_path = make_onnx(tmp_path / "m.onnx")
    engine = build_tensorrt_engine(onnx_path, tmp_path / "m.engine", precision="fp32", max_batch=4,
                                   timing_cache=None)
    video = make_video(tmp_path / "v.mp4", n=8, w=320, h=240)
    frames = np.stack(decode_all(video))
    crop = (40, 0, 240, 240)
    ort = load_runner(onnx_path, threads=1)
    ref = ort.infer(preprocess_for(ort.metadata, frames, crop=crop))
    with load_runner(engine) as trt_runner:
        pre = cp.CudaPreprocessor.for_runner(trt_runner)
        got = []
        for i in range(0, len(frames), 4):
            chunk = frames[i:i + 4]
            for j, f in enumerate(chunk):
                pre.run_into_runner(f, crop, j)
            got.append(trt_runner.infer_device(len(chunk)))
        pre.close()
    np.testing.assert_allclose(np.concatenate(got), ref, atol=1e-3, rtol=1e-3)
    st = tmp_path / "s.json"
    r = cli("stream", video, "--engine", engine, "--preprocess", "cuda", "--stats", st,
            "--crop", "40,0,240,240", "--batch-size", "4")
    assert r.exit_code == 0, r.output
    import json

    s = json.loads(st.read_text())
    assert s["source"]["preprocess"] == "cuda" and s["frames_processed"] == 8


def test_cuda_preprocessing_without_gpu_is_a_clean_error():
    from edgeskd.errors import BackendUnavailable

    try:
        from edgeskd.runtime.cuda_binding import get_binding

        get_binding()
    except BackendUnavailable:
        with pytest.raises(BackendUnavailable):
            cp.CudaPreprocessor(META)
    else:
        pytest.skip("a GPU is present")


def test_kernel_loader_without_a_driver_is_a_clean_error():
    from edgeskd.errors import BackendUnavailable

    pytest.importorskip("cuda.bindings.driver")
    try:
        from edgeskd.runtime.cuda_binding import get_binding

        get_binding()
        pytest.skip("a GPU is present")
    except BackendUnavailable:
        pass
    with pytest.raises(BackendUnavailable, match="driver"):
        cp._CudaPythonKernels((8, 7))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cuda_yuv_path_matches_cpu_stream_path_on_real_frames(tmp_path, dtype):
    """The stream's CUDA path (decoder YUV planes → GPU) vs its CPU path (FramePreprocessor) on the
    same decoded 720p frames: float32 identical up to 1e-5, float16 within one half-precision step."""
    from edgeskd.stream.frames import FramePreprocessor

    frames = _decoded_frames(make_video(tmp_path / "v.mp4", n=4, w=1280, h=720))
    meta = META.replace(input_size=[224, 224], channel_order="BGR")
    cpu = FramePreprocessor(meta)
    with cp.CudaPreprocessor(meta, dtype=dtype) as pre:
        for crop in (None, (200, 0, 880, 720)):
            got = pre.frames_to_host(frames, crop)
            ref = np.stack([cpu.one(f, crop) for f in frames])
            if dtype == np.float32:
                np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
            else:
                np.testing.assert_allclose(got.astype(np.float32), ref, rtol=2 ** -10, atol=2 ** -14)


@pytest.mark.gpu
def test_cuda_preprocessor_on_the_last_gpu(tmp_path):
    """The device index reaches the binding and the kernel loader (on a 1-GPU box: device 0)."""
    from edgeskd.runtime.cuda_binding import get_binding

    n = get_binding().device_count()
    frames = np.stack(decode_all(make_video(tmp_path / "v.mp4", n=2, w=320, h=240)))
    with cp.CudaPreprocessor(META, device=n - 1) as pre:
        assert pre.device == n - 1 and pre.cu.device == n - 1
        np.testing.assert_allclose(pre.to_host(frames), preprocess_for(META, frames), rtol=0, atol=1e-5)



def test_runtime_does_not_import_the_stream_package():
    """The YUV coefficients the kernel is fed live in runtime/preprocess.py: no module of the runtime
    (what an edge box runs) imports the stream package, at the top or inside a function."""
    import ast

    root = Path(__file__).resolve().parents[1] / "edgeskd" / "runtime"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith("edgeskd.stream")]
    assert found == []
