"""What the stream produces for one frame: the record every sink reads (``sink.write(result)``).

A model with a "no polyp" (background) class (``Presence``): ``probs`` is its whole distribution
(P(background) at the background column, ``runtime.postprocess.class_probabilities``); a frame is
"no polyp" (state ``NO_POLYP_CALL``: no class, no subclass) when P(background) reaches the
artifact's presence threshold, else its class and confidence come from the probabilities
conditional on a polyp (the polyp columns renormalised). The smoothed (displayed) state reads the
smoothed distribution the same way, except that a frame whose own probabilities say "no polyp" is
shown as "no polyp" at once: the moving average lags when a polyp leaves the view, and on a held-out
3-minute video every class call on a polyp-free frame was one of the 1–8 frames after a polyp left.
The stream then shows a class call only once it has held for ``--hold`` seconds
(``smoothing.CallHold``, applied by ``pipeline.FrameProcessor``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeskd.clinical.operating_point import NO_CALL, NO_POLYP_CALL
from edgeskd.stream.crop import Box
from edgeskd.stream.source import DecodedFrame


@dataclass(frozen=True)
class Presence:
    """How to read a background-class model's probabilities: its background column, the presence
    threshold, the polyp classes and the subclasses that belong to them."""

    background: int
    threshold: float
    polyp_classes: tuple[int, ...]
    polyp_subclasses: tuple[int, ...] | None     # None: class-logit model

    @classmethod
    def of(cls, meta) -> "Presence | None":
        if getattr(meta, "background_class", None) is None:
            return None
        from edgeskd.runtime.postprocess import presence_threshold

        subs = (tuple(k for k, c in enumerate(meta.subclass_to_class) if c != meta.background_class)
                if meta.output == "subclass_logits" else None)
        return cls(int(meta.background_class), presence_threshold(meta), tuple(meta.polyp_classes), subs)

    def conditional(self, p: np.ndarray) -> np.ndarray:
        """(C,) probabilities → (C',) over the polyp classes, renormalised."""
        q = np.asarray(p, dtype=np.float64)[list(self.polyp_classes)]
        s = float(q.sum())
        return q / s if s > 0 else np.full(len(q), 1.0 / len(q))

    def conditional_full(self, p: np.ndarray) -> np.ndarray:
        """(C,) probabilities → (C,) with the conditional probabilities at the polyp classes, 0 at the
        background (indexed like the classes)."""
        out = np.zeros(len(p), dtype=np.float64)
        out[list(self.polyp_classes)] = self.conditional(p)
        return out


def frame_state(p: np.ndarray, threshold: float | None, presence: Presence | None = None) -> int:
    """The argmax class, or NO_CALL when the highest probability is below ``threshold`` — with a
    background class: NO_POLYP_CALL when P(background) reaches the presence threshold, else the
    same on the conditional probabilities."""
    if presence is not None:
        if float(p[presence.background]) >= presence.threshold:
            return NO_POLYP_CALL
        q = presence.conditional(p)
        k = int(np.argmax(q))
        return presence.polyp_classes[k] if threshold is None or float(q[k]) >= threshold else NO_CALL
    k = int(np.argmax(p))
    return k if threshold is None or float(p[k]) >= threshold else NO_CALL


def frame_class(p: np.ndarray, presence: Presence | None) -> int:
    """The class: the argmax, or with a background class the argmax of the conditional probabilities."""
    if presence is None:
        return int(np.argmax(p))
    return presence.polyp_classes[int(np.argmax(presence.conditional(p)))]


@dataclass
class FrameResult:
    frame: DecodedFrame                  # the decoded frame: its number, time and pixels
    ordinal: int                         # 0-based position among the processed frames
    probs: np.ndarray                    # (C,) calibrated class probabilities of this frame
    smoothed: np.ndarray                 # (C,) after temporal smoothing
    subclass_probs: np.ndarray | None    # (S,) for subclass-logit models, else None
    latency_s: float                     # from leaving the decoder to the (smoothed) prediction
    fps: float                           # processing rate (sliding window) when its batch was done
    crop: Box | None                     # the content area the frame was cropped to
    threshold: float | None = None       # confidence a call needs (None: every frame gets its argmax)
    presence: Presence | None = None     # a model with a "no polyp" class
    pred: int = field(init=False)                 # argmax of probs (conditional on a polyp, with presence)
    smoothed_pred: int = field(init=False)        # the same of smoothed
    top_subclass: int | None = field(init=False)  # argmax of subclass_probs (among the polyp subclasses)
    state: int = field(init=False)                # smoothed_pred, NO_CALL (-1): "low confidence", NO_POLYP_CALL (-2)
                                                  # (also when the frame's own probabilities say "no polyp";
                                                  # NO_CALL while a new call has not held --hold s: smoothing.CallHold)
    raw_state: int = field(init=False)            # the same from the frame's own probs

    def __post_init__(self) -> None:
        pr = self.presence
        self.pred = frame_class(self.probs, pr)
        self.smoothed_pred = frame_class(self.smoothed, pr)
        self.top_subclass = None
        if self.subclass_probs is not None:
            if pr is None or pr.polyp_subclasses is None:
                self.top_subclass = int(np.argmax(self.subclass_probs))
            else:
                subs = list(pr.polyp_subclasses)
                self.top_subclass = subs[int(np.argmax(np.asarray(self.subclass_probs)[subs]))]
        self.raw_state = frame_state(self.probs, self.threshold, pr)
        self.state = NO_POLYP_CALL if self.raw_state == NO_POLYP_CALL else frame_state(self.smoothed, self.threshold, pr)

    @property
    def present(self) -> bool:
        """The frame's own probabilities say a polyp is in view (always, without a background class)."""
        return self.raw_state != NO_POLYP_CALL

    def presence_probability(self, smoothed: bool = False) -> float | None:
        """1 − P(background) of the frame (or its smoothed value); None without a background class."""
        if self.presence is None:
            return None
        p = self.smoothed if smoothed else self.probs
        return 1.0 - float(p[self.presence.background])

    @property
    def index(self) -> int:
        """The frame's number in the source (what ``--labels`` rows name)."""
        return self.frame.index

    @property
    def time_s(self) -> float:
        return self.frame.time_s
