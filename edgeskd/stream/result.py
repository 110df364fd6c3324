"""What the stream produces for one frame: the record every sink reads (``sink.write(result)``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeskd.stream.crop import Box
from edgeskd.stream.source import DecodedFrame


@dataclass
class FrameResult:
    frame: DecodedFrame                  # the decoded frame: its number, time and pixels
    ordinal: int                         # 0-based position among the processed frames
    probs: np.ndarray                    # (C,) class probabilities of this frame
    smoothed: np.ndarray                 # (C,) after temporal smoothing
    subclass_probs: np.ndarray | None    # (S,) for subclass-logit models, else None
    latency_s: float                     # from leaving the decoder to the (smoothed) prediction
    fps: float                           # processing rate (sliding window) when its batch was done
    crop: Box | None                     # the content area the frame was cropped to
    pred: int = field(init=False)                 # argmax of probs
    smoothed_pred: int = field(init=False)        # argmax of smoothed
    top_subclass: int | None = field(init=False)  # argmax of subclass_probs

    def __post_init__(self) -> None:
        self.pred = int(np.argmax(self.probs))
        self.smoothed_pred = int(np.argmax(self.smoothed))
        self.top_subclass = None if self.subclass_probs is None else int(np.argmax(self.subclass_probs))

    @property
    def index(self) -> int:
        """The frame's number in the source (what ``--labels`` rows name)."""
        return self.frame.index

    @property
    def time_s(self) -> float:
        return self.frame.time_s
