"""Run statistics: fps, latency percentiles, frame counts, and frame-level accuracy / F1."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Sequence

import numpy as np

from edgeskd.metrics import label_metrics, present


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not len(latencies_s):
        return {"p50": None, "p95": None, "p99": None}
    a = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


class FpsMonitor:
    """Frames per second over a sliding window of monotonic timestamps (supervision-style)."""

    def __init__(self, window: int = 60) -> None:
        self._t: deque[float] = deque(maxlen=window)

    def tick(self, n: int = 1, t: float | None = None) -> None:
        t = time.perf_counter() if t is None else t
        for _ in range(n):
            self._t.append(t)

    @property
    def fps(self) -> float:
        if len(self._t) < 2 or self._t[-1] <= self._t[0]:
            return 0.0
        return (len(self._t) - 1) / (self._t[-1] - self._t[0])


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, positive: int) -> dict[str, Any]:
    """Frame-level accuracy, F1 of the positive class and macro F1 (``edgeskd.metrics.label_metrics``),
    as the stats JSON shows them: fractions with 6 decimals."""
    return present(label_metrics(y_true, y_pred, num_classes, positive), scale=1.0, digits=6)


def stats_dict(
    *, frames_decoded: int, frames_processed: int, frames_dropped: int, fps: float,
    latencies_s: Sequence[float], decode_fps_ceiling: float | None, source: dict[str, Any],
    labels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stats JSON schema of `edgeskd stream` (issue 6), plus "labels" with --labels."""
    d: dict[str, Any] = {
        "frames_decoded": int(frames_decoded),
        "frames_processed": int(frames_processed),
        "frames_dropped": int(frames_dropped),
        "fps": round(float(fps), 3),
        "latency_ms": percentiles_ms(latencies_s),
        "decode_fps_ceiling": None if decode_fps_ceiling is None else round(float(decode_fps_ceiling), 3),
        "source": source,
    }
    if labels is not None:
        d["labels"] = labels
    return d


STATS_KEYS = ("frames_decoded", "frames_processed", "frames_dropped", "fps", "latency_ms", "decode_fps_ceiling", "source")
