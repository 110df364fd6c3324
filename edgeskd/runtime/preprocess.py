"""The one preprocessing used everywhere: training, calibration, evaluation, CPU and CUDA inference.

uint8 image (HWC, RGB or BGR) → optional crop → bilinear resize → channel order → (x/255 − mean)/std
→ float32 NCHW. Resize convention: half-pixel centres, ``src = (dst + 0.5) * in/out − 0.5`` clamped
to the image, no antialiasing — the same as ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, antialias=False)`` and OpenCV ``INTER_LINEAR``. The CUDA kernel
(``kernels/preprocess.cu``) implements exactly this and is tested against this file.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from edgeskd.errors import UsageError


# Decoded video frames, 8-bit planar YUV → RGB: shared by the stream's CPU path
# (``edgeskd.stream.frames``) and the CUDA kernel's YUV entry points (``cuda_preprocess.run_frame``),
# so both convert alike. Formats: name -> (chroma x shift, chroma y shift, full range).
FAST_FORMATS: dict[str, tuple[int, int, bool]] = {
    "yuv420p": (1, 1, False),
    "yuvj420p": (1, 1, True),
    "yuv422p": (1, 0, False),
    "yuvj422p": (1, 0, True),
    "yuv444p": (0, 0, False),
    "yuvj444p": (0, 0, True),
}
# AVColorSpace values → (Kr, Kb)
_MATRICES = {1: (0.2126, 0.0722), 5: (0.299, 0.114), 6: (0.299, 0.114), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)


def yuv_to_rgb_coeffs(colorspace: int, color_range: int, full_range_fmt: bool) -> tuple[float, ...]:
    """Coefficients of R = ys*(Y - y0) + rv*V', G = ys*(Y - y0) - gu*U' - gv*V', B = ys*(Y - y0) + bu*U'."""
    kr, kb = _MATRICES.get(int(colorspace or 2), _BT601)
    kg = 1.0 - kr - kb
    full = full_range_fmt or int(color_range or 0) == 2
    if full:
        y0, ys, cs = 0.0, 1.0, 1.0
    else:
        y0, ys, cs = 16.0, 255.0 / 219.0, 255.0 / 224.0
    rv = 2 * (1 - kr) * cs
    bu = 2 * (1 - kb) * cs
    gu = 2 * kb * (1 - kb) / kg * cs
    gv = 2 * kr * (1 - kr) / kg * cs
    return y0, ys, rv, gu, gv, bu


@lru_cache(maxsize=64)
def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel bilinear sampling of one axis, ``n_in`` → ``n_out`` samples: (i0, i1, w1), so that
    output k = in[i0[k]] + (in[i1[k]] - in[i0[k]]) * w1[k]. Shared with the video-frame path."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def resize_bilinear(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HWC (or NHWC) array to ``out_hw``; returns float32."""
    h_axis = img.ndim - 3
    in_h, in_w = img.shape[h_axis], img.shape[h_axis + 1]
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    x = img.astype(np.float32, copy=False)
    if (in_h, in_w) == (out_h, out_w):
        return x.copy() if x is img else x
    y0, y1, wy = axis_weights(in_h, out_h)
    x0, x1, wx = axis_weights(in_w, out_w)
    top = np.take(x, y0, axis=h_axis)
    bot = np.take(x, y1, axis=h_axis)
    wy_b = wy.reshape((-1, 1, 1))
    rows = top + (bot - top) * wy_b
    left = np.take(rows, x0, axis=h_axis + 1)
    right = np.take(rows, x1, axis=h_axis + 1)
    return left + (right - left) * wx.reshape((-1, 1))


def crop_image(img: np.ndarray, crop: Sequence[int] | None) -> np.ndarray:
    """Crop (x, y, w, h) from an HWC or NHWC array; ``None`` = whole image."""
    if crop is None:
        return img
    x, y, w, h = (int(v) for v in crop)
    H, W = img.shape[-3], img.shape[-2]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise UsageError(f"crop {x},{y},{w},{h} does not fit a {W}x{H} frame; give x,y,w,h inside the frame")
    return img[..., y:y + h, x:x + w, :]


def preprocess(
    images: np.ndarray,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    input_order: str = "RGB",
    model_order: str = "RGB",
    crop: Sequence[int] | None = None,
    dtype: type = np.float32,
) -> np.ndarray:
    """uint8 HWC or NHWC → float NCHW, ready for a runner."""
    if images.dtype != np.uint8:
        raise UsageError(f"preprocess expects uint8 images, got {images.dtype}")
    single = images.ndim == 3
    if single:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UsageError(f"preprocess expects HxWx3 or NxHxWx3 images, got shape {images.shape}")
    x = resize_bilinear(crop_image(images, crop), input_size)
    if input_order != model_order:
        x = x[..., ::-1]
    m = np.asarray(mean, np.float32) * 255.0
    s = np.asarray(std, np.float32) * 255.0
    x = (x - m) / s
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=dtype)


def preprocess_for(meta, images: np.ndarray, *, input_order: str = "RGB", crop=None) -> np.ndarray:
    """``preprocess`` with size/mean/std/channel order from a ModelMeta."""
    return preprocess(
        images, meta.input_size, meta.mean, meta.std,
        input_order=input_order, model_order=meta.channel_order, crop=crop,
    )
