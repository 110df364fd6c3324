"""Temporal smoothing of class probabilities: an exponential moving average defined in time.

``smoothed_t = a * p_t + (1 - a) * smoothed_{t-1}``, started at the first frame's probabilities,
with ``a = 1 - (1 - alpha) ** (dt * REFERENCE_FPS)`` for a frame ``dt`` seconds after the previous
one: ``alpha`` is the weight of the newest frame at 30 fps, and the average spans the same time at
any frame rate (a weight per frame would smooth a 15 fps video over twice as many seconds as a 30
fps one, and a real-time stream that dropped frames over more). Without times, or for ``dt <= 0``,
``a = alpha``. ``alpha = 1`` switches smoothing off; smaller alpha = smoother and slower. The result
stays a probability vector (a convex combination of probability vectors). In real-time mode it runs
over the processed frames (dropped frames never reach it).
"""

from __future__ import annotations

import numpy as np

from edgeskd.errors import UsageError

REFERENCE_FPS = 30.0


class EmaSmoother:
    def __init__(self, alpha: float) -> None:
        if not (0.0 < float(alpha) <= 1.0):
            raise UsageError(f"--smooth {alpha} must be in (0, 1]; 1 = no smoothing, 0.3 = moderate")
        self.alpha = float(alpha)
        self.state: np.ndarray | None = None
        self.last_time: float | None = None

    def reset(self) -> None:
        self.state = None
        self.last_time = None

    def weight(self, time_s: float | None) -> float:
        """The newest frame's weight for a frame at ``time_s`` (seconds)."""
        if time_s is None or self.last_time is None or not time_s > self.last_time or self.alpha >= 1.0:
            return self.alpha
        return 1.0 - (1.0 - self.alpha) ** ((time_s - self.last_time) * REFERENCE_FPS)

    def update(self, probs: np.ndarray, time_s: float | None = None) -> np.ndarray:
        """Feed one frame's (C,) probabilities (and its time); returns the smoothed (C,) float32 vector (a copy)."""
        p = np.asarray(probs, dtype=np.float32)
        if self.state is None or self.state.shape != p.shape:
            self.state = p.copy()
        else:
            a = np.float32(self.weight(time_s))
            self.state *= np.float32(1.0) - a
            self.state += a * p
        if time_s is not None:
            self.last_time = float(time_s)
        return self.state.copy()

    def update_batch(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) probabilities in frame order → (N, C) smoothed."""
        return np.stack([self.update(p) for p in probs]) if len(probs) else np.zeros_like(probs)


DEFAULT_HOLD_S = 0.1


class CallHold:
    """A class call is displayed once it has held for ``hold_s`` seconds of video.

    The displayed state (after smoothing) of each frame goes in with the frame's time; while a class
    call (state >= 0) is younger than ``hold_s`` — the candidate state changed less than ``hold_s``
    ago — the frame shows "low confidence" (``NO_CALL``) instead. "No polyp" and "low confidence" are
    shown at once. So a call that flickers (at 30 fps and 0.1 s: a run of 3 frames or fewer) is never
    shown, and a steady one appears ``hold_s`` late. ``hold_s = 0`` shows every call at once."""

    def __init__(self, hold_s: float = DEFAULT_HOLD_S) -> None:
        if not 0.0 <= float(hold_s) <= 5.0:
            raise UsageError(f"--hold {hold_s} must be between 0 and 5 seconds; 0 shows every call at once")
        self.hold_s = float(hold_s)
        self.state: int | None = None
        self.since: float = 0.0

    def update(self, state: int, time_s: float) -> int:
        """The state to display for a frame whose candidate state is ``state`` at ``time_s``."""
        from edgeskd.clinical.operating_point import NO_CALL

        if state != self.state:
            self.state, self.since = state, float(time_s)
        if state >= 0 and float(time_s) - self.since < self.hold_s - 1e-9:
            return NO_CALL
        return state
