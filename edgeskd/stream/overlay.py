"""Annotation drawn on each output frame (PIL ImageDraw; no OpenCV).

Top-left panel: the frame's state — smoothed class + probability, or "low confidence" (amber) when
that probability is below the artifact's threshold, or "no polyp" (grey; no class, no subclass) for a
model with a background class — (raw in brackets), top subclass, a probability bar for the positive
class, fps and latency. The content-area crop is outlined.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edgeskd.clinical.operating_point import LOW_CONFIDENCE, NO_POLYP

LOW_CONFIDENCE_COLOUR = (255, 200, 60)   # amber: no call
NO_POLYP_COLOUR = (190, 190, 190)        # grey: no polyp in view, nothing to call


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
    low_confidence: bool = False   # prob below threshold: no call
    threshold: float | None = None
    no_polyp: bool = False         # background-class model: no polyp in view (no class, no subclass)
    presence: float | None = None  # smoothed 1 − P(background), background-class models

    def headline(self) -> str:
        """The first line: the call, "low confidence" with the probability that fell short, or "no polyp"."""
        raw = f"(raw {self.raw_class_name} {self.raw_prob:.2f})"
        if self.no_polyp:
            return f"{NO_POLYP}  (presence {self.presence:.2f})" if self.presence is not None else NO_POLYP
        if self.low_confidence:
            below = f" < {self.threshold:.2f}" if self.threshold is not None else ""
            return f"{LOW_CONFIDENCE}: {self.class_name} {self.prob:.2f}{below}  {raw}"
        return f"{self.class_name} {self.prob:.2f}  {raw}"


@lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _outline(rgb: np.ndarray, box: tuple[int, int, int, int], colour: tuple[int, int, int], t: int) -> None:
    """Rectangle outline drawn in place with numpy (cheap on a full HD frame)."""
    h, w = rgb.shape[:2]
    x, y, bw, bh = box
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + bw), min(h, y + bh)
    if x1 <= x0 or y1 <= y0:
        return
    c = np.asarray(colour, np.uint8)
    rgb[y0:min(y1, y0 + t), x0:x1] = c
    rgb[max(y0, y1 - t):y1, x0:x1] = c
    rgb[y0:y1, x0:min(x1, x0 + t)] = c
    rgb[y0:y1, max(x0, x1 - t):x1] = c


@lru_cache(maxsize=1024)
def _text_mask(text: str, size: int) -> np.ndarray:
    """Anti-aliased coverage mask (uint8, h x w) of ``text``; cached, since the same strings recur
    (FreeType rendering is most of the cost of drawing a frame's annotation)."""
    from PIL import Image, ImageDraw

    font = _font(size)
    w = max(1, int(np.ceil(font.getlength(text))) + 2)
    img = Image.new("L", (w, int(size * 1.3) + 2), 0)
    ImageDraw.Draw(img).text((1, 0), text, font=font, fill=255)
    return np.asarray(img)


def _blit(out: np.ndarray, mask: np.ndarray, x: int, y: int, colour: tuple[int, int, int]) -> None:
    h, w = out.shape[:2]
    mh, mw = min(mask.shape[0], h - y), min(mask.shape[1], w - x)
    if mh <= 0 or mw <= 0:
        return
    a = mask[:mh, :mw, None].astype(np.float32) / 255.0
    region = out[y:y + mh, x:x + mw]
    region[...] = (region * (1.0 - a) + np.asarray(colour, np.float32) * a + 0.5).astype(np.uint8)


def draw_annotation(rgb: np.ndarray, ann: Annotation) -> np.ndarray:
    """Return a new uint8 RGB frame with the annotation drawn on it (numpy compositing of cached
    PIL text masks: a few hundred microseconds for a 720p frame)."""
    out = np.array(rgb, dtype=np.uint8, copy=True, order="C")
    h, w = out.shape[:2]
    size = max(10, min(h, w) // 28)
    if ann.crop is not None:
        _outline(out, ann.crop, (80, 200, 255), max(1, size // 10))
    lines = [
        ann.headline(),
        f"subclass {ann.subclass} {ann.subclass_prob:.2f}" if ann.subclass is not None and not ann.no_polyp
        else "subclass -",
        f"{ann.fps:5.1f} fps  {ann.latency_ms:5.1f} ms",
    ]
    masks = [_text_mask(s, size) for s in lines]
    pad = max(2, size // 3)
    line_h = size + pad
    box_w = min(w, max(m.shape[1] for m in masks) + 2 * pad)
    box_h = min(h, line_h * len(lines) + 2 * pad + size // 2 + 1)
    panel = out[:box_h, :box_w]
    panel[...] = (panel.astype(np.uint16) * 66 >> 8).astype(np.uint8)       # darken to ~25 %
    colour = (NO_POLYP_COLOUR if ann.no_polyp else LOW_CONFIDENCE_COLOUR if ann.low_confidence
              else (255, 90, 90) if ann.is_positive else (120, 255, 120))
    for i, m in enumerate(masks):
        _blit(out, m, pad, pad + i * line_h, colour if i == 0 else (235, 235, 235))
    bar_y = pad + len(lines) * line_h
    bar_w = box_w - 2 * pad - 1
    bar_h = max(2, size // 3)
    if bar_y + bar_h < h and bar_w > 2:
        out[bar_y:bar_y + bar_h, pad:pad + bar_w] = (60, 60, 60)
        fill = 0 if ann.no_polyp else int(bar_w * float(np.clip(ann.positive_prob, 0, 1)))
        out[bar_y:bar_y + bar_h, pad:pad + fill] = (255, 90, 90)
    return out
