"""What the stream produces for one frame: the record every sink reads (``sink.write(result)``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeskd.clinical.operating_point import NO_CALL
from edgeskd.stream.crop import Box
from edgeskd.stream.source import DecodedFrame


def _state(p: np.ndarray, threshold: float | None) -> int:
    """The argmax class, or NO_CALL when the highest probability is below ``threshold``."""
    k = int(np.argmax(p))
    return k if threshold is None or float(p[k]) >= threshold else NO_CALL


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
    pred: int = field(init=False)                 # argmax of probs
    smoothed_pred: int = field(init=False)        # argmax of smoothed
    top_subclass: int | None = field(init=False)  # argmax of subclass_probs
    state: int = field(init=False)                # smoothed_pred, or NO_CALL (-1): "low confidence"
    raw_state: int = field(init=False)            # pred, or NO_CALL, from the frame's own probs

    def __post_init__(self) -> None:
        self.pred = int(np.argmax(self.probs))
        self.smoothed_pred = int(np.argmax(self.smoothed))
        self.top_subclass = None if self.subclass_probs is None else int(np.argmax(self.subclass_probs))
        self.state = _state(self.smoothed, self.threshold)
        self.raw_state = _state(self.probs, self.threshold)

    @property
    def index(self) -> int:
        """The frame's number in the source (what ``--labels`` rows name)."""
        return self.frame.index

    @property
    def time_s(self) -> float:
        return self.frame.time_s
