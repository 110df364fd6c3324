"""Run statistics: fps, latency percentiles, frame counts, and frame-level accuracy / F1.

``StreamStats`` is the accumulator the stream feeds every ``FrameResult`` to (``write(result)``);
``stats_dict`` is the schema of the stats JSON.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edgeskd.metrics import label_metrics, present

if TYPE_CHECKING:
    from edgeskd.stream.result import FrameResult


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


class StreamStats:
    """What the stats JSON reports, accumulated frame by frame: the processed count, latencies and,
    with ground truth (frame index → class index), the raw and smoothed predictions of the labelled
    frames."""

    def __init__(self, class_names: Sequence[str], positive: int, labels: dict[int, int] | None = None) -> None:
        self.class_names = list(class_names)
        self.positive = int(positive)
        self.labels = labels
        self.processed = 0
        self.latencies_s: list[float] = []
        self.y_true: list[int] = []
        self.y_raw: list[int] = []
        self.y_smooth: list[int] = []

    def write(self, result: "FrameResult") -> None:
        self.processed += 1
        self.latencies_s.append(result.latency_s)
        if self.labels is not None and result.index in self.labels:
            self.y_true.append(self.labels[result.index])
            self.y_raw.append(result.pred)
            self.y_smooth.append(result.smoothed_pred)

    def _metrics(self, y_pred: list[int]) -> dict[str, Any]:
        # frame-level accuracy, positive-class F1 and macro F1 as the stats JSON shows them: 6-decimal fractions
        m = label_metrics(np.array(self.y_true), np.array(y_pred), len(self.class_names), self.positive)
        return present(m, scale=1.0, digits=6)

    def labels_block(self) -> dict[str, Any] | None:
        """Frame-level metrics against the ground truth (None without ``labels``)."""
        if self.labels is None:
            return None
        return {
            "frames_labelled": len(self.labels),
            "frames_evaluated": len(self.y_true),
            "raw": self._metrics(self.y_raw),
            "smoothed": self._metrics(self.y_smooth),
            "positive_class": self.class_names[self.positive],
        }

    def summary(self, *, frames_decoded: int, frames_dropped: int, wall_s: float,
                decode_fps_ceiling: float | None, source: dict[str, Any]) -> dict[str, Any]:
        """The stats JSON of the run (``stats_dict``)."""
        return stats_dict(
            frames_decoded=frames_decoded, frames_processed=self.processed, frames_dropped=frames_dropped,
            fps=self.processed / wall_s if wall_s > 0 else 0.0, latencies_s=self.latencies_s,
            decode_fps_ceiling=decode_fps_ceiling, source=source, labels=self.labels_block(),
        )
