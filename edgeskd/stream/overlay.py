"""Annotation drawn on each output frame (PIL ImageDraw; no OpenCV).

Top-left panel: smoothed class + probability (raw in brackets), top subclass, a probability bar for
the positive class, fps and latency. The content-area crop is outlined.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass
class Annotation:
    class_name: str
    prob: float              # smoothed probability of class_name
    raw_class_name: str
    raw_prob: float
    subclass: str | None     # top subclass (None for class-logit models)
    subclass_prob: float | None
    positive_prob: float     # smoothed P(positive class), for the bar
    fps: float
    latency_ms: float
    crop: tuple[int, int, int, int] | None = None
    is_positive: bool = False


@lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def draw_annotation(rgb: np.ndarray, ann: Annotation) -> np.ndarray:
    """Return a new uint8 RGB frame with the annotation drawn on it."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    draw = ImageDraw.Draw(img, "RGBA")
    size = max(10, min(h, w) // 28)
    font = _font(size)
    if ann.crop is not None:
        x, y, cw, ch = ann.crop
        draw.rectangle([x, y, x + cw - 1, y + ch - 1], outline=(80, 200, 255, 160), width=max(1, size // 10))
    lines = [
        f"{ann.class_name} {ann.prob:.2f}  (raw {ann.raw_class_name} {ann.raw_prob:.2f})",
        f"subclass {ann.subclass} {ann.subclass_prob:.2f}" if ann.subclass is not None else "subclass -",
        f"{ann.fps:5.1f} fps  {ann.latency_ms:5.1f} ms",
    ]
    pad = max(2, size // 3)
    line_h = size + pad
    box_w = min(w - 1, int(max(draw.textlength(s, font=font) for s in lines)) + 2 * pad)
    box_h = min(h - 1, line_h * len(lines) + 2 * pad + size // 2)
    draw.rectangle([0, 0, box_w, box_h], fill=(0, 0, 0, 150))
    colour = (255, 90, 90, 255) if ann.is_positive else (120, 255, 120, 255)
    for i, s in enumerate(lines):
        draw.text((pad, pad + i * line_h), s, font=font, fill=colour if i == 0 else (235, 235, 235, 255))
    bar_y = pad + len(lines) * line_h
    bar_w = box_w - 2 * pad
    draw.rectangle([pad, bar_y, pad + bar_w, bar_y + size // 3], outline=(200, 200, 200, 200))
    draw.rectangle([pad, bar_y, pad + int(bar_w * float(np.clip(ann.positive_prob, 0, 1))), bar_y + size // 3],
                   fill=(255, 90, 90, 220))
    return np.asarray(img)
