"""Endoscope content area: the bounding box of the illuminated field.

Endoscopy video shows the image inside a circular / octagonal field of view on a black frame, with
overlay text (patient data, time, zoom) in the black area. The model was trained on the field, so
the crop is applied before the resize.

Detector (numpy only, runs on a ~192-px thumbnail): brightness = max(R, G, B); "lit" = brightness
above a threshold set between the border's black level and the field's level; a morphological
opening (box erosion + dilation via an integral image) removes thin strokes such as overlay text
and isolated specks; then the largest lit region is isolated by alternating column / row
projections (the run of columns, then rows, holding most lit pixels), which separates a text block
from the field whenever a black gap lies between them. ``CropTracker`` observes the frames itself:
it re-estimates the area every N frames and smooths it (median of the last K estimates; a large
jump — a different scope or zoom — is adopted after it has been seen twice in a row).
``FrameCrop`` is the stream's crop stage: none, a fixed box, or the tracked area.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np

from edgeskd.stream.frames import check_crop, thumbnail_rgb

Box = tuple[int, int, int, int]  # x, y, w, h


def _box_sum(mask: np.ndarray, k: int) -> np.ndarray:
    """Sum of ``mask`` over the k x k window centred on each pixel (zero padding)."""
    r0 = k // 2
    p = np.pad(mask.astype(np.int32), ((r0 + 1, k - r0 - 1), (r0 + 1, k - r0 - 1)))
    ii = p.cumsum(0).cumsum(1)
    return ii[k:, k:] - ii[:-k, k:] - ii[k:, :-k] + ii[:-k, :-k]


def binary_open(mask: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return mask
    eroded = _box_sum(mask, k) == k * k
    return _box_sum(eroded, k) > 0


def _best_run(profile: np.ndarray, min_count: float) -> tuple[int, int] | None:
    """[start, stop) of the contiguous run of profile >= min_count with the largest total."""
    on = profile >= min_count
    if not on.any():
        return None
    edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    csum = np.concatenate([[0], np.cumsum(profile)])
    totals = csum[stops] - csum[starts]
    i = int(np.argmax(totals))
    return int(starts[i]), int(stops[i])


def lit_mask(rgb_small: np.ndarray, threshold: float | None = None) -> np.ndarray:
    v = rgb_small.max(axis=2).astype(np.float32)
    if threshold is None:
        # between the border's black level (low percentile) and the field's level (high percentile)
        lo, hi = np.percentile(v, 5), np.percentile(v, 90)
        threshold = max(24.0, lo + 0.25 * (hi - lo)) if hi - lo > 20 else 24.0
    return v > threshold


def detect_content_area(
    rgb_small: np.ndarray, *, threshold: float | None = None, open_px: int | None = None,
    min_fraction: float = 0.05,
) -> Box | None:
    """Bounding box (x, y, w, h) of the illuminated field in a small RGB image; None if no field."""
    h, w = rgb_small.shape[:2]
    mask = lit_mask(rgb_small, threshold)
    k = open_px if open_px is not None else max(3, round(min(h, w) / 40))
    mask = binary_open(mask, k)
    if mask.sum() < min_fraction * h * w:
        return None
    y0, y1, x0, x1 = 0, h, 0, w
    for _ in range(3):
        sub = mask[y0:y1, x0:x1]
        cols = _best_run(sub.sum(0).astype(np.float64), 1)
        if cols is None:
            return None
        nx0, nx1 = x0 + cols[0], x0 + cols[1]
        sub = mask[y0:y1, nx0:nx1]
        rws = _best_run(sub.sum(1).astype(np.float64), 1)
        if rws is None:
            return None
        ny0, ny1 = y0 + rws[0], y0 + rws[1]
        if (nx0, nx1, ny0, ny1) == (x0, x1, y0, y1):
            break
        x0, x1, y0, y1 = nx0, nx1, ny0, ny1
    if (x1 - x0) * (y1 - y0) < min_fraction * h * w:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def scale_box(box: Box, sx: float, sy: float, width: int, height: int) -> Box:
    """Thumbnail box → full-frame box, clamped to the frame."""
    x, y, w, h = box
    x0 = max(0, int(np.floor(x * sx)))
    y0 = max(0, int(np.floor(y * sy)))
    x1 = min(width, int(np.ceil((x + w) * sx)))
    y1 = min(height, int(np.ceil((y + h) * sy)))
    return (x0, y0, max(1, x1 - x0), max(1, y1 - y0))


def iou(a: Sequence[int], b: Sequence[int]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union else 0.0


class CropTracker:
    """Re-estimate the content area every ``every`` frames; smooth with a median of ``window``.

    ``observe(frame)`` per decoded frame does it all; ``due`` / ``update`` / ``step`` are its parts."""

    def __init__(self, width: int, height: int, *, every: int = 30, window: int = 5, jump_iou: float = 0.6) -> None:
        self.every = max(1, int(every))
        self.window = max(1, int(window))
        self.jump_iou = jump_iou
        self.reset(width, height)

    def reset(self, width: int, height: int) -> None:
        """Forget everything: a new frame size (some live sources change resolution mid-stream)."""
        self.width, self.height = width, height
        self._history: deque[Box] = deque(maxlen=self.window)
        self._pending: Box | None = None
        self.box: Box | None = None
        self.estimates = 0
        self._frames = 0

    def due(self) -> bool:
        return self._frames % self.every == 0

    def update(self, estimate: Box | None) -> Box | None:
        """Feed one estimate (full-frame coordinates, or None if none was found)."""
        self.estimates += 1
        if estimate is None:
            return self.box
        if self.box is not None and iou(estimate, self.box) < self.jump_iou:
            # a different field (scope change / zoom): adopt after a second consistent estimate
            if self._pending is not None and iou(estimate, self._pending) >= self.jump_iou:
                self._history.clear()
                self._pending = None
            else:
                self._pending = estimate
                return self.box
        else:
            self._pending = None
        self._history.append(estimate)
        arr = np.asarray(self._history, dtype=np.float64)
        x0, y0 = np.median(arr[:, 0]), np.median(arr[:, 1])
        x1, y1 = np.median(arr[:, 0] + arr[:, 2]), np.median(arr[:, 1] + arr[:, 3])
        x0, y0 = int(round(max(0, x0))), int(round(max(0, y0)))
        x1, y1 = int(round(min(self.width, x1))), int(round(min(self.height, y1)))
        self.box = (x0, y0, max(1, x1 - x0), max(1, y1 - y0))
        return self.box

    def step(self) -> None:
        self._frames += 1

    def observe(self, frame: Any, rgb: np.ndarray | None = None) -> Box | None:
        """Feed one decoded frame (``rgb``: its full RGB array, if the decoder made one); returns
        the current box. The content area is estimated on a thumbnail when an estimate is due."""
        if (frame.width, frame.height) != (self.width, self.height):
            self.reset(frame.width, frame.height)
        if self.due():
            thumb, sx, sy = thumbnail_rgb(frame, rgb=rgb)
            est = detect_content_area(thumb)
            self.update(None if est is None else scale_box(est, sx, sy, frame.width, frame.height))
        self.step()
        return self.box


class FrameCrop:
    """The crop applied to each batch of frames: ``option`` None (no crop), a fixed (x, y, w, h) box
    (checked against the frame size, again if the size changes), or "auto" (a ``CropTracker``
    re-estimating the content area every ``every`` frames)."""

    def __init__(self, option: str | Sequence[int] | None, width: int, height: int, *, every: int = 30) -> None:
        self.mode = "auto" if option == "auto" else ("none" if option is None else "fixed")
        self.fixed = check_crop(option, width, height) if self.mode == "fixed" else None  # type: ignore[arg-type]
        self.tracker = CropTracker(width, height, every=every) if self.mode == "auto" else None
        self.size = (width, height)
        self.box: Box | None = self.fixed

    def observe(self, items: Sequence[Any]) -> Box | None:
        """The crop for this batch of decoded frames (``.frame``, ``.rgb``)."""
        if self.tracker is not None:
            for it in items:
                self.box = self.tracker.observe(it.frame, it.rgb)
        elif self.fixed is not None:
            size = (items[0].frame.width, items[0].frame.height)
            if size != self.size:
                self.box = check_crop(self.fixed, *size)
        return self.box
