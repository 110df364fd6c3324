"""The one adapter between a model with a "no polyp" (background) class and the binary code.

The HP-vs-adenoma figures (F1, accuracy, AUC, NPV, calibration, thresholds, the INT8 gate) are
defined on the cases that show a polyp (true label ≠ background), from the probabilities
conditional on a polyp; presence figures are reported apart. ``polyp_view(logits, meta, labels)``
turns a model's raw outputs and labels into

* the polyp-only problem: the polyp cases' polyp-output columns, ``meta.polyp_only()`` and their
  labels in its class indexing — any code written for a model without a background class (metrics,
  temperature and threshold fits, the clinical figures) runs on it unchanged;
* the presence view: every case's P(background) and whether it truly shows a polyp
  (``presence_figures``).

For a model without a background class the view is the input itself (every case a polyp case), so
callers need no branch of their own. numpy only: the runtime imports this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeskd.runtime.postprocess import background_probability, polyp_logits, presence_threshold


@dataclass(frozen=True)
class PolypView:
    meta: Any                         # ``meta.polyp_only()``
    logits: np.ndarray                # (n_polyp, polyp outputs) of the polyp cases
    labels: np.ndarray                # (n_polyp,) in the polyp-only class indexing
    mask: np.ndarray                  # (N,) bool: the case shows a polyp
    p_background: np.ndarray | None   # (N,) P(background) of every case; None without a background class
    has_background: bool

    def rows(self, values: Any) -> Any:
        """A per-case array (N, ...) restricted to the polyp cases (None stays None)."""
        return None if values is None else np.asarray(values)[self.mask]


def polyp_view(logits: Any, meta: Any, labels: Any) -> PolypView:
    """Split (logits, labels) of a model into the polyp-only problem and the presence view."""
    x = np.asarray(logits, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"logits {x.shape} do not match {len(y)} labels")
    bg = getattr(meta, "background_class", None)
    if bg is None:
        return PolypView(meta, x, y, np.ones(len(y), dtype=bool), None, False)
    mask = y != bg
    remap = np.full(meta.num_classes, -1, dtype=np.int64)
    remap[meta.polyp_classes] = np.arange(meta.num_classes - 1)
    return PolypView(meta.polyp_only(), polyp_logits(x[mask], meta), remap[y[mask]], mask,
                     background_probability(x, meta), True)


def presence_figures(p_background: Any, has_polyp: Any, threshold: float) -> dict[str, Any]:
    """Presence figures (fractions) of P(background) against the truth, at ``threshold`` ("no polyp"
    when P(background) >= threshold): ``sensitivity`` (polyp cases called present), ``false_presence``
    (no-polyp cases called present), each with a 95 % Wilson interval; ``auc`` of presence = 1 −
    P(background) for "shows a polyp" (None with one side only)."""
    from edgeskd.clinical.operating_point import wilson_interval
    from edgeskd.metrics import roc_auc

    p = np.asarray(p_background, dtype=np.float64)
    pos = np.asarray(has_polyp, dtype=bool)
    present = p < float(threshold)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    k_pos, k_neg = int(np.sum(present & pos)), int(np.sum(present & ~pos))

    def ci(k: int, n: int) -> list[float] | None:
        w = wilson_interval(k, n)
        return None if w is None else [w[0], w[1]]

    return {
        "threshold": float(threshold), "n_polyp": n_pos, "n_no_polyp": n_neg,
        "sensitivity": k_pos / n_pos if n_pos else None, "sensitivity_ci95": ci(k_pos, n_pos),
        "false_presence": k_neg / n_neg if n_neg else None, "false_presence_ci95": ci(k_neg, n_neg),
        "auc": roc_auc(pos, 1.0 - p),
    }


def view_presence(view: PolypView, meta: Any) -> dict[str, Any] | None:
    """``presence_figures`` of a view at the artifact's presence threshold (None without a background class)."""
    if not view.has_background:
        return None
    return presence_figures(view.p_background, view.mask, presence_threshold(meta))
