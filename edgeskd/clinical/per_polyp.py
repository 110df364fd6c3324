"""One decision per polyp visit, from its frames' calibrated probabilities (numpy only).

Frame decisions flicker; a clinician decides once per polyp. A polyp visit is identified by its
integer id in the labels (``polyp_id``; -1 or empty = no polyp in the frame). Its frames are those
with its id — and, when frame labels are given, a class label (frames that show too little of the
polyp to be labelled do not count). The visit's probabilities are the mean of its frames' calibrated
probabilities; its decision is their argmax when the highest mean probability reaches the threshold,
else "low confidence" (``NO_CALL``). Frames of one id need not be contiguous: the same id is the
same polyp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edgeskd.clinical.operating_point import LOW_CONFIDENCE, NO_CALL, Z95, binary_rates
from edgeskd.errors import DataError


def canonical_polyp_id(value: Any) -> str | None:
    """A labels file's polyp id as one canonical string, or None for no polyp (empty, -1): integer
    ids written as floats by a spreadsheet or pandas ("3.0") read as "3", so one polyp is not two."""
    s = "" if value is None else str(value).strip()
    if s == "":
        return None
    try:
        f = float(s)
    except ValueError:
        return s
    if f.is_integer():
        return None if int(f) == -1 else str(int(f))
    return s


@dataclass(frozen=True)
class PolypDecision:
    polyp_id: int
    n_frames: int               # frames that went into the mean
    first_frame: int            # frame numbers (``frames`` given to ``aggregate_polyps``, else indices)
    last_frame: int
    probabilities: list[float]  # mean calibrated class probabilities over the frames
    confidence: float           # the highest of them
    argmax: int
    decision: int               # argmax if confidence >= threshold, else NO_CALL (-1)
    label: int | None           # the polyp's class from the frame labels (None: no labels)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        name = (lambda c: c if class_names is None else class_names[c])  # noqa: E731
        return {
            "polyp_id": self.polyp_id, "n_frames": self.n_frames, "first_frame": self.first_frame,
            "last_frame": self.last_frame, "probabilities": [round(p, 6) for p in self.probabilities],
            "confidence": round(self.confidence, 6),
            "decision": LOW_CONFIDENCE if self.decision < 0 else name(self.decision),
            "label": None if self.label is None else name(self.label),
            "correct": None if self.label is None or self.decision < 0 else self.decision == self.label,
        }


def _polyp_label(pid: int, frame_labels: np.ndarray) -> int | None:
    known = np.unique(frame_labels[frame_labels >= 0])
    if known.size > 1:
        raise DataError(f"labels: polyp {pid} has frames labelled with different classes "
                        f"({', '.join(map(str, known.tolist()))}); one polyp has one class")
    return int(known[0]) if known.size else None


def aggregate_polyps(probs: Any, ids: Any, threshold: float | None, *, labels: Any | None = None,
                     frames: Any | None = None) -> list[PolypDecision]:
    """Per-frame calibrated probabilities (N, C) and polyp ids (N,) (-1 = none; parse label files with
    ``polyp_ids``) → one ``PolypDecision`` per polyp, ordered by first frame. ``labels`` (N,): frame
    classes, -1 where unlabelled. ``threshold`` None: every polyp gets its argmax."""
    p = np.asarray(probs, dtype=np.float64)
    pid = np.asarray(ids)
    if p.ndim != 2 or pid.shape != (len(p),):
        raise ValueError(f"probabilities {p.shape} and polyp ids {pid.shape} do not fit")
    if pid.size and not np.issubdtype(pid.dtype, np.integer):
        raise DataError("labels: polyp ids must be integers (parse them with edgeskd.clinical.polyp_ids)")
    y = None if labels is None else np.asarray(labels).astype(np.int64)
    if y is not None and y.shape != pid.shape:
        raise ValueError(f"labels {y.shape} do not fit {len(pid)} frames")
    fr = np.arange(len(p)) if frames is None else np.asarray(frames).astype(np.int64)
    use = (pid >= 0) if y is None else (pid >= 0) & (y >= 0)
    out = []
    for k in np.unique(pid[use]):
        m = use & (pid == k)
        mean = p[m].mean(axis=0)
        conf, arg = float(mean.max()), int(mean.argmax())
        called = threshold is None or conf >= float(threshold)
        out.append(PolypDecision(
            polyp_id=int(k), n_frames=int(m.sum()), first_frame=int(fr[m].min()), last_frame=int(fr[m].max()),
            probabilities=[float(v) for v in mean], confidence=conf, argmax=arg,
            decision=arg if called else NO_CALL, label=None if y is None else _polyp_label(int(k), y[m])))
    return sorted(out, key=lambda d: d.first_frame)


def polyp_summary(decisions: Sequence[PolypDecision], positive: int = 1, *,
                  class_names: Sequence[str] | None = None, z: float = Z95) -> dict[str, Any]:
    """Per-polyp figures over the labelled polyps: coverage, accuracy of the calls, accuracy of the
    argmax (every polyp, no abstention: comparable with frame-level accuracy at argmax), sensitivity,
    specificity, NPV and PPV with Wilson intervals; and each polyp's decision."""
    lab = [d for d in decisions if d.label is not None]
    y = np.array([d.label for d in lab], dtype=np.int64)
    rates = binary_rates(y, np.array([d.decision for d in lab], dtype=np.int64), positive, z)
    rates.pop("n")
    arg = np.array([d.argmax for d in lab], dtype=np.int64)
    return {
        "n_polyps": len(decisions), "n_labelled": len(lab),
        **rates,
        "accuracy_argmax": float(np.mean(arg == y)) if len(lab) else None,
        "polyps": [d.to_dict(class_names) for d in decisions],
    }
