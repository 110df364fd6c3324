"""Temporal smoothing of class probabilities: an exponential moving average.

``smoothed_t = alpha * p_t + (1 - alpha) * smoothed_{t-1}``, started at the first frame's
probabilities. ``alpha = 1`` switches smoothing off; smaller alpha = smoother and slower. The result
stays a probability vector (a convex combination of probability vectors). In real-time mode it runs
over the processed frames (dropped frames never reach it).
"""

from __future__ import annotations

import numpy as np

from edgeskd.errors import UsageError


class EmaSmoother:
    def __init__(self, alpha: float) -> None:
        if not (0.0 < float(alpha) <= 1.0):
            raise UsageError(f"--smooth {alpha} must be in (0, 1]; 1 = no smoothing, 0.3 = moderate")
        self.alpha = float(alpha)
        self.state: np.ndarray | None = None

    def reset(self) -> None:
        self.state = None

    def update(self, probs: np.ndarray) -> np.ndarray:
        """Feed one frame's (C,) probabilities; returns the smoothed (C,) float32 vector (a copy)."""
        p = np.asarray(probs, dtype=np.float32)
        if self.state is None or self.state.shape != p.shape:
            self.state = p.copy()
        else:
            self.state *= np.float32(1.0 - self.alpha)
            self.state += np.float32(self.alpha) * p
        return self.state.copy()

    def update_batch(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) probabilities in frame order → (N, C) smoothed."""
        return np.stack([self.update(p) for p in probs]) if len(probs) else np.zeros_like(probs)
