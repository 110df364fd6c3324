"""The clinical figures of one artifact on a labelled split (numpy only): what build-engine's gate
report and bench rows show next to F1, so a reduced-precision artifact that keeps its F1 but moves
its calibration or its operating point is seen.

From the artifact's raw outputs and its own metadata: ECE (15 bins) and NLL of the probabilities
calibrated with the artifact's temperature(s), and at the artifact's threshold (None: at argmax,
coverage 100 %) coverage, NPV and PPV with 95 % Wilson intervals. ``as_percent`` gives the units of
bench.json and build reports (rates in percent, threshold and temperature as stored, NLL in nats).
With a "no polyp" class these figures are on the cases that show a polyp, from the probabilities
conditional on a polyp (``edgeskd.runtime.polyp_view``); presence figures are apart (``presence``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from edgeskd.clinical.calibration import calibrated_probabilities, class_logits, ece, nll
from edgeskd.clinical.operating_point import evaluate_operating_point
from edgeskd.runtime.postprocess import case_temperatures

RATE_KEYS = ("ece", "coverage", "npv", "ppv")
INTERVAL_KEYS = ("npv_ci95", "ppv_ci95")
CHANGE_KEYS = ("ece", "npv", "coverage")     # compared with the FP32 source, in points


def clinical_figures(logits: Any, meta: Any, labels: Any) -> dict[str, Any]:
    """Fractions: ``ece``, ``nll``, ``coverage``, ``npv`` (+ ``npv_ci95``, ``n_negative_calls``),
    ``ppv`` (+ ``ppv_ci95``, ``n_positive_calls``) at ``meta.threshold``; and the artifact's
    ``temperature``, ``subclass_temperatures`` and ``threshold``."""
    from edgeskd.runtime.polyp_view import polyp_view

    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("no labelled cases for the clinical figures")
    full_meta, view = meta, polyp_view(logits, meta, y)
    logits, meta, y = view.logits, view.meta, view.labels
    if len(y) == 0:
        raise ValueError("no labelled case shows a polyp: no HP-vs-adenoma figures")
    probs = calibrated_probabilities(logits, meta)
    op = evaluate_operating_point(probs, y, meta.threshold, int(meta.positive_class))
    return {
        "temperature": float(meta.temperature), "subclass_temperatures": full_meta.subclass_temperatures,
        "threshold": meta.threshold,
        "ece": ece(probs, y), "nll": nll(class_logits(logits, meta), y, case_temperatures(logits, meta)),
        "coverage": op["coverage"], "npv": op["npv"], "npv_ci95": op["npv_ci95"],
        "n_negative_calls": op["n_negative_calls"], "ppv": op["ppv"], "ppv_ci95": op["ppv_ci95"],
        "n_positive_calls": op["n_positive_calls"],
    }


def as_percent(fig: Mapping[str, Any], digits: int = 4) -> dict[str, Any]:
    """Rates and intervals in percent (rounded); NLL to 6 decimals; the rest as is."""
    out = dict(fig)
    for k in RATE_KEYS:
        if out.get(k) is not None:
            out[k] = round(100.0 * float(out[k]), digits)
    for k in INTERVAL_KEYS:
        if out.get(k) is not None:
            out[k] = [round(100.0 * float(v), digits) for v in out[k]]
    if out.get("nll") is not None:
        out["nll"] = round(float(out["nll"]), 6)
    return out


def changes(fig: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, float | None]:
    """``fig`` − ``ref`` for ECE, NPV and coverage, in the unit both are in (None where either is)."""
    return {k: None if fig.get(k) is None or ref.get(k) is None else round(float(fig[k]) - float(ref[k]), 4)
            for k in CHANGE_KEYS}


def moved_beyond(change: Mapping[str, float | None], allowance: float) -> list[str]:
    """The figures whose change exceeds ``allowance`` (points), e.g. ["NPV +1.50"]."""
    names = {"ece": "ECE", "npv": "NPV", "coverage": "coverage"}
    return [f"{names[k]} {v:+.2f}" for k, v in change.items() if v is not None and abs(v) > allowance]
