"""CPU preprocessing of decoded video frames — the same numbers as ``edgeskd.runtime.preprocess``.

Where the time goes (1280x720 H.264, measured on the 2-core dev box): decoding ~1.9 ms/frame,
``frame.to_ndarray(format="rgb24")`` ~2.4 ms/frame, the model (tiny_cnn 128x128, ORT) ~0.6 ms.
The full-frame RGB conversion alone would halve the throughput, and ``frame.reformat(w, h)``
(swscale's scaler) is slower still and uses a different resize convention than training.

So we convert only what the resize reads. The half-pixel bilinear resize of
``runtime/preprocess.py`` reads two source rows and two source columns per output pixel; we gather
those (2h x 2w) pixels from the decoder's own planes (Y, U, V; chroma by its subsampling), convert
them to RGB uint8 values with the frame's colour matrix and range (BT.601 when untagged, as
FFmpeg does), and run exactly the same float32 lerp + normalisation as the reference. The result is
bit-identical to ``preprocess_for(meta, rgb)`` given the same RGB values; against swscale's own
YUV→RGB (fixed-point, its chroma filter) the RGB values differ by at most 3 of 255 levels, about
0.5 on average. Pixel formats without a fast path (10-bit, NV12, RGB, palettes...)
go through ``to_ndarray("rgb24")`` + the same resize.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

# the YUV formats and colour matrices live with the reference preprocessing (the CUDA path uses them too)
from edgeskd.runtime.preprocess import FAST_FORMATS, axis_weights, yuv_to_rgb_coeffs


def _plane(frame: Any, i: int, width: int, height: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:height, :width]


@lru_cache(maxsize=32)
def _plan(frame_hw: tuple[int, int], crop: tuple[int, int, int, int] | None, out_hw: tuple[int, int]):
    H, W = frame_hw
    x, y, w, h = crop if crop is not None else (0, 0, W, H)
    y0, y1, wy = axis_weights(h, out_hw[0])
    x0, x1, wx = axis_weights(w, out_hw[1])
    rows = np.concatenate([y0, y1]) + y
    cols = np.concatenate([x0, x1]) + x
    return rows, cols, wy.reshape(1, -1, 1), wx.reshape(1, 1, -1)


def check_crop(crop: Sequence[int] | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    from edgeskd.errors import UsageError

    if crop is None:
        return None
    x, y, w, h = (int(v) for v in crop)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise UsageError(f"crop {x},{y},{w},{h} does not fit a {width}x{height} frame; give x,y,w,h inside it")
    return (x, y, w, h)


def _gather(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    # two 1-D takes are ~6x faster than one 2-D fancy index
    return np.take(np.take(a, rows, axis=0), cols, axis=1)


def sample_rgb(frame: Any, rows: np.ndarray, cols: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
    """RGB values of the frame at rows x cols: uint8-valued float32, planar (3, len(rows), len(cols))."""
    fmt = frame.format.name
    fast = FAST_FORMATS.get(fmt) if rgb is None else None
    if fast is None:
        if rgb is None:
            rgb = frame.to_ndarray(format="rgb24")
        return np.ascontiguousarray(_gather(rgb, rows, cols).transpose(2, 0, 1), dtype=np.float32)
    sx, sy, full_fmt = fast
    W, H = frame.width, frame.height
    cw = (W + (1 << sx) - 1) >> sx
    ch = (H + (1 << sy) - 1) >> sy
    Y = _gather(_plane(frame, 0, W, H), rows, cols).astype(np.float32)
    ri, ci = rows >> sy, cols >> sx
    U = _gather(_plane(frame, 1, cw, ch), ri, ci).astype(np.float32)
    V = _gather(_plane(frame, 2, cw, ch), ri, ci).astype(np.float32)
    U -= 128.0
    V -= 128.0
    y0, ys, rv, gu, gv, bu = yuv_to_rgb_coeffs(
        getattr(frame, "colorspace", 2), getattr(frame, "color_range", 0), full_fmt
    )
    Y -= y0
    Y *= ys
    out = np.empty((3,) + Y.shape, np.float32)
    np.add(Y, rv * V, out=out[0])
    np.subtract(Y, gu * U + gv * V, out=out[1])
    np.add(Y, bu * U, out=out[2])
    np.rint(out, out=out)
    np.clip(out, 0.0, 255.0, out=out)
    return out


def resize_sampled(g: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """The lerp of ``runtime.preprocess.resize_bilinear`` (same operations, same order) on
    pre-gathered planar (3, 2h, 2w) samples → (3, h, w)."""
    h, w = wy.shape[1], wx.shape[2]
    top, bot = g[:, :h], g[:, h:]
    rws = top + (bot - top) * wy
    left, right = rws[:, :, :w], rws[:, :, w:]
    return left + (right - left) * wx


class FramePreprocessor:
    """Decoded frames (+ a crop) → float32 NCHW batch, numerically the training preprocessing."""

    def __init__(self, meta: Any, *, input_order: str = "RGB") -> None:
        self.meta = meta
        self.out_hw = (int(meta.input_size[0]), int(meta.input_size[1]))
        self.swap = input_order != meta.channel_order
        self.mean255 = (np.asarray(meta.mean, np.float32) * 255.0).reshape(3, 1, 1)
        self.std255 = (np.asarray(meta.std, np.float32) * 255.0).reshape(3, 1, 1)

    def one(self, frame: Any, crop: tuple[int, int, int, int] | None, rgb: np.ndarray | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
        rows, cols, wy, wx = _plan((frame.height, frame.width), crop, self.out_hw)
        x = resize_sampled(sample_rgb(frame, rows, cols, rgb), wy, wx)
        if self.swap:
            x = x[::-1]
        if out is None:
            out = np.empty(x.shape, np.float32)
        np.subtract(x, self.mean255, out=out)
        np.divide(out, self.std255, out=out)
        return out

    def __call__(self, frames: Sequence[Any], crop: tuple[int, int, int, int] | None,
                 rgbs: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        h, w = self.out_hw
        batch = np.empty((len(frames), 3, h, w), np.float32)
        for i, f in enumerate(frames):
            self.one(f, crop, None if rgbs is None else rgbs[i], out=batch[i])
        return batch


def thumbnail_rgb(frame: Any, max_side: int = 192, rgb: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """A small nearest-sampled RGB uint8 view of a frame (for the content-area detector).

    Returns (image, sx, sy): full-frame x = thumbnail x * sx (pixel-centre sampling)."""
    W, H = frame.width, frame.height
    step = max(1.0, max(W, H) / max_side)
    tw, th = max(1, int(round(W / step))), max(1, int(round(H / step)))
    sx, sy = W / tw, H / th
    cols = np.minimum(((np.arange(tw) + 0.5) * sx).astype(np.intp), W - 1)
    rows = np.minimum(((np.arange(th) + 0.5) * sy).astype(np.intp), H - 1)
    return sample_rgb(frame, rows, cols, rgb).transpose(1, 2, 0).astype(np.uint8), sx, sy
