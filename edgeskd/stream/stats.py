"""Run statistics: fps, latency percentiles, frame counts, frame-level accuracy / F1 and, with a
confidence threshold and polyp ids in the labels, the clinical figures (``edgeskd.clinical``).

``StreamStats`` is the accumulator the stream feeds every ``FrameResult`` to (``write(result)``);
``stats_dict`` is the schema of the stats JSON. With ``--labels`` its "labels" block holds:

* ``raw`` / ``smoothed``: frame-level accuracy, F1 and macro F1 at argmax (every labelled frame);
* ``frame_states``: the frames' states (class or "low confidence" below the threshold) against the
  ground truth: coverage (share of frames with a call), accuracy of the calls, NPV / PPV with 95 %
  intervals by polyp (``video_figures.cluster_rate_ci``), sensitivity, specificity;
* ``per_polyp``: one decision per polyp (mean of its labelled frames' calibrated probabilities,
  "low confidence" below the threshold) and the same figures over polyps, plus ``accuracy_argmax``
  (every polyp, comparable with the frame-level ``raw.accuracy``) — or None and ``per_polyp_note``
  saying why not (no ``polyp_id`` column, no frame with an id);
* ``video``: the video figures (``edgeskd.stream.video_figures``): polyp-frame accuracy with its
  interval, per-subtype frame accuracy, class calls and false alarms per minute on frames without a
  polyp (episode rule stated), non-adenoma calls per hyperplastic polyp, and the artifact's
  image-test figures beside them.

A model with a "no polyp" class: the frame class is the argmax of the probabilities conditional on
a polyp; states may be "no polyp" (no call); per-polyp decisions use the conditional probabilities.

Rates are fractions rounded to 6 decimals.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edgeskd.clinical.operating_point import binary_rates
from edgeskd.metrics import label_metrics, present
from edgeskd.stream.video_figures import cluster_rate_ci, rate_ci

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
        # frame handed over by the decoder → decision ready; the annotated video is recorded off this path
        "live_latency_ms": percentiles_ms(latencies_s),
    }
    if labels is not None:
        d["labels"] = labels
    return d


STATS_KEYS = ("frames_decoded", "frames_processed", "frames_dropped", "fps", "latency_ms", "decode_fps_ceiling",
              "source", "live_latency_ms")


def _round(v: Any, digits: int = 6) -> Any:
    """Floats (also inside lists and dicts) rounded for the stats JSON."""
    if isinstance(v, float):
        return round(v, digits)
    if isinstance(v, list):
        return [_round(x, digits) for x in v]
    if isinstance(v, dict):
        return {k: _round(x, digits) for k, x in v.items()}
    return v


STATE_KEYS = ("n_called", "coverage", "accuracy", "npv", "npv_ci95", "n_negative_calls", "ppv", "ppv_ci95",
              "n_positive_calls", "sensitivity", "specificity")


class StreamStats:
    """What the stats JSON reports, accumulated frame by frame: the processed count, latencies and,
    with ground truth (frame index → class index), the raw and smoothed predictions and states of the
    labelled frames; with polyp ids (frame index → id), each such frame's calibrated probabilities
    for the per-polyp decisions."""

    def __init__(self, class_names: Sequence[str], positive: int, labels: dict[int, int] | None = None, *,
                 polyp_ids: dict[int, int] | None = None, threshold: float | None = None,
                 threshold_source: str | None = None, no_polyp: set[int] | None = None,
                 subclasses: dict[int, str] | None = None, fps: float | None = None, meta: Any = None,
                 polyp_names: dict[int, str] | None = None) -> None:
        self.class_names = list(class_names)
        self.positive = int(positive)
        self.labels = labels
        self.polyp_ids = polyp_ids
        self.polyp_names = polyp_names or {}   # polyp id → the labels' name for it (per_polyp shows the name)
        self.threshold = threshold
        self.threshold_source = threshold_source
        self.no_polyp = no_polyp if no_polyp is not None else set()
        self.subclasses = subclasses
        self.fps = fps
        self.meta = meta
        self.background = getattr(meta, "background_class", None) is not None
        self.processed = 0
        self.latencies_s: list[float] = []
        self.y_true: list[int] = []
        self.y_raw: list[int] = []
        self.y_smooth: list[int] = []
        self.state_raw: list[int] = []
        self.state_smooth: list[int] = []
        self.present: list[bool] = []
        self.subtypes: list[str | None] = []
        self.frame_polyps: list[int | str | None] = []       # polyp id of each labelled frame (None: unknown)
        self._cluster_memo: tuple[int, list[int | str] | None] | None = None   # (frames seen, _clusters())
        self.label_frames: list[int] = []                     # the frame index of each labelled frame
        self.empty_frames: list[tuple[int, int, int]] = []   # (ordinal, state, raw state) of frames without a polyp
        self.index_range: list[int] = []                     # first and last processed frame index
        self.polyp_frames: list[tuple[int, int, int, np.ndarray]] = []   # (frame, polyp id, label or -1, probs)
        self.polyp_states: dict[int, tuple[int, list[int]]] = {}        # polyp id → (label, displayed states)

    def write(self, result: "FrameResult") -> None:
        self.processed += 1
        self.latencies_s.append(result.latency_s)
        i = result.index
        self.index_range = [i, i] if not self.index_range else [min(self.index_range[0], i), max(self.index_range[1], i)]
        if self.labels is not None and i in self.labels:
            self.y_true.append(self.labels[i])
            self.y_raw.append(result.pred)
            self.y_smooth.append(result.smoothed_pred)
            self.state_raw.append(result.raw_state)
            self.state_smooth.append(result.state)
            self.present.append(result.present)
            self.subtypes.append(None if self.subclasses is None else self.subclasses.get(i))
            self.frame_polyps.append(None if self.polyp_ids is None else self.polyp_ids.get(i))
            self.label_frames.append(i)
        elif i in self.no_polyp:
            self.empty_frames.append((result.ordinal, result.state, result.raw_state))
        if self.polyp_ids is not None and i in self.polyp_ids and i not in self.no_polyp:
            label = self.labels.get(i, -1) if self.labels is not None else -1
            probs = np.asarray(result.probs, dtype=np.float64)
            if result.presence is not None:   # conditional on a polyp, 0 at the background class
                probs = result.presence.conditional_full(probs)
            self.polyp_frames.append((i, self.polyp_ids[i], label, probs))
            self.polyp_states.setdefault(self.polyp_ids[i], (label, []))[1].append(result.state)

    def _metrics(self, y_pred: list[int]) -> dict[str, Any]:
        # frame-level accuracy, positive-class F1 and macro F1 as the stats JSON shows them: 6-decimal fractions
        m = label_metrics(np.array(self.y_true), np.array(y_pred), len(self.class_names), self.positive)
        return present(m, scale=1.0, digits=6)

    def _states(self, states: list[int]) -> dict[str, Any]:
        y, d = np.array(self.y_true, dtype=np.int64), np.array(states, dtype=np.int64)
        r = binary_rates(y, d, self.positive)
        out = {k: r[k] for k in STATE_KEYS}
        ids = np.asarray(self._clusters() or [None] * len(y), dtype=object)
        # NPV / PPV / coverage over frames, with intervals by polyp (video_figures.cluster_rate_ci)
        neg, pos = (d >= 0) & (d != self.positive), d == self.positive
        out["npv_ci95"], out["npv_interval"] = cluster_rate_ci(y[neg] != self.positive, list(ids[neg]))[1:]
        out["ppv_ci95"], out["ppv_interval"] = cluster_rate_ci(y[pos] == self.positive, list(ids[pos]))[1:]
        out["coverage_ci95"], out["interval"] = cluster_rate_ci(d >= 0, list(ids))[1:]
        return _round(out)

    def _clusters(self) -> list[int | str] | None:
        """The cluster of each labelled frame for intervals: its polyp id; a polyp frame the labels give
        no id is grouped with the id-less frames next to it (one run of consecutive frames, most likely
        one polyp), so one missing id no longer turns every interval frame-level. None without ids."""
        if self.polyp_ids is None:
            return None
        # one stats write reads it three times (two frame-state blocks, the video block); frames are
        # only ever appended, so their count says whether the last answer still holds
        n = len(self.frame_polyps)
        if self._cluster_memo is None or self._cluster_memo[0] != n:
            self._cluster_memo = (n, self._cluster_ids())
        return self._cluster_memo[1]

    def _cluster_ids(self) -> list[int | str]:
        missing = [k for k, c in enumerate(self.frame_polyps) if c is None]
        if not missing:
            return list(self.frame_polyps)   # type: ignore[arg-type]
        from edgeskd.stream.video_figures import run_clusters

        runs = run_clusters([self.label_frames[k] for k in missing])
        out: list[int | str] = list(self.frame_polyps)   # type: ignore[arg-type]
        for k, r in zip(missing, runs):
            out[k] = f"frames without a polyp id, run {int(r)}"
        return out

    def per_polyp(self) -> tuple[dict[str, Any] | None, str | None]:
        """(per-polyp figures and decisions, None) or (None, why there are none)."""
        from edgeskd.clinical.per_polyp import aggregate_polyps, polyp_summary

        if self.polyp_ids is None:
            return None, "the labels have no polyp_id column: no per-polyp decisions (frame-level figures only)"
        if not self.polyp_frames:
            return None, "no processed frame has a polyp id in the labels: no per-polyp decisions"
        frames, ids, labels, probs = zip(*self.polyp_frames)
        decisions = aggregate_polyps(np.stack(probs), np.array(ids, dtype=np.int64), self.threshold,
                                     labels=np.array(labels, dtype=np.int64), frames=np.array(frames))
        if not decisions:
            return None, "no polyp has a labelled frame among the processed frames: no per-polyp decisions"
        out = polyp_summary(decisions, self.positive, class_names=self.class_names)
        for d in out.get("polyps", []):
            d["polyp_id"] = self.polyp_names.get(d["polyp_id"], d["polyp_id"])
        lab = [d for d in decisions if d.label is not None]
        out["accuracy_argmax_ci95"] = rate_ci(sum(d.argmax == d.label for d in lab), len(lab))[1]
        n_called = sum(d.decision >= 0 for d in lab)
        out["accuracy_ci95"] = rate_ci(sum(d.decision == d.label for d in lab), n_called)[1]
        out["coverage_ci95"] = rate_ci(n_called, len(lab))[1]
        return _round(out), None

    def video_block(self) -> dict[str, Any]:
        """The video figures (``edgeskd.stream.video_figures``), beside the artifact's image-test figures."""
        from edgeskd.stream import video_figures as vf

        image, image_note = vf.image_test_block(self.meta)
        lo, hi = self.index_range or [0, -1]
        n_empty_in_range = sum(1 for f in self.no_polyp if lo <= f <= hi)
        polyps = self._clusters()   # intervals by polyp
        block: dict[str, Any] = {
            "fps": self.fps,
            "polyp_frames": vf.polyp_frame_figures(self.y_true, self.y_raw, self.y_smooth,
                                                   self.present if self.background else None, polyps),
            "per_subtype": (vf.per_subtype(self.subtypes, self.y_true, self.y_raw,
                                           (image or {}).get("per_subclass_accuracy"), polyps)
                            if self.subclasses is not None else None),
            "no_polyp_frames": vf.no_polyp_figures([e[0] for e in self.empty_frames],
                                                   [e[1] for e in self.empty_frames],
                                                   [e[2] for e in self.empty_frames], n_empty_in_range, self.fps,
                                                   self.background),
            "negative_polyps_called": (vf.negative_polyps_called(self.polyp_states, self.positive)
                                       if self.polyp_states else None),
            "image_test": image,
        }
        if self.subclasses is None:
            block["per_subtype_note"] = "the labels have no subclass column: no per-subtype frame accuracy"
        n_no_id = sum(c is None for c in self.frame_polyps) if self.polyp_ids is not None else 0
        if n_no_id:
            block["polyp_id_note"] = (f"{n_no_id} polyp frame(s) have no polyp id: the "
                                      "intervals count each run of consecutive such frames as one polyp")
        if image_note is not None:
            block["image_test_note"] = image_note
        return _round(block)

    def labels_block(self) -> dict[str, Any] | None:
        """Frame-level (and per-polyp) metrics against the ground truth (None without ``labels``)."""
        if self.labels is None:
            return None
        per_polyp, note = self.per_polyp()
        block = {
            "frames_labelled": len(self.labels),
            "frames_evaluated": len(self.y_true),
            "raw": self._metrics(self.y_raw),
            "smoothed": self._metrics(self.y_smooth),
            "positive_class": self.class_names[self.positive],
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "frame_states": {"raw": self._states(self.state_raw), "smoothed": self._states(self.state_smooth)},
            "per_polyp": per_polyp,
            "frames_without_polyp": len(self.empty_frames),
            "video": self.video_block(),
        }
        if note is not None:
            block["per_polyp_note"] = note
        return block
    def summary(self, *, frames_decoded: int, frames_dropped: int, wall_s: float,
                decode_fps_ceiling: float | None, source: dict[str, Any]) -> dict[str, Any]:
        """The stats JSON of the run (``stats_dict``)."""
        return stats_dict(
            frames_decoded=frames_decoded, frames_processed=self.processed, frames_dropped=frames_dropped,
            fps=self.processed / wall_s if wall_s > 0 else 0.0, latencies_s=self.latencies_s,
            decode_fps_ceiling=decode_fps_ceiling, source=source, labels=self.labels_block(),
        )
