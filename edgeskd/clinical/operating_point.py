"""Operating points for optical diagnosis: calls, "low confidence", NPV/PPV with Wilson intervals.

Positive = the class an artifact's ``positive_class`` names (adenoma / SSA). A case gets a call when
its confidence (highest calibrated class probability) is at least the threshold; otherwise it is
"low confidence" (no prediction). Among the calls:

- NPV = right negative calls / negative calls (a negative call says "not the positive class";
  it is right when the case is not of the positive class); PPV = right positive calls / positive
  calls; sensitivity = TP / (TP + FN), specificity = TN / (TN + FP); coverage = calls / cases.
- ASGE PIVI "diagnose-and-leave": NPV ≥ 90 % for adenomatous histology on high-confidence calls.
- The threshold is chosen on validation: the lowest confidence in (0.5, 1) — hence the highest
  coverage — at which NPV ≥ 90 %, with at least ``min_calls`` negative calls behind it; None (and a
  reason) when no threshold does. PPV is reported at that threshold but does not move it (PIVI sets
  the bar for the call that leaves a polyp in place; a wrong positive call leads to the resection
  that would happen without CADx). ``ppv_target`` asks for PPV ≥ that as well, where some threshold
  reaches both: on the quickstart's validation that moved the threshold from 0.81 to 0.88 and halved
  the hyperplastic calls.
- Intervals are 95 % Wilson score intervals. Rates are fractions in [0, 1]; None where undefined.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from edgeskd.errors import UsageError

Z95 = 1.959963984540054          # standard normal 97.5 % quantile
NPV_TARGET = 0.90
PPV_TARGET = 0.90
MIN_CALLS = 10                   # a rate on fewer calls does not count as reaching a target
MIN_THRESHOLD_SAMPLES = 20       # fewer validation cases: no threshold
LOW_CONFIDENCE = "low confidence"
NO_CALL = -1                     # the decision code of a low-confidence case
NO_POLYP = "no polyp"            # the state of a frame a model with a background class finds empty
NO_POLYP_CALL = -2               # its decision code (no call, like NO_CALL, but for another reason)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of the proportion k/n (None when n = 0)."""
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def validate_threshold(value: Any, option: str = "--threshold") -> float:
    """A user-given confidence threshold as a float in (0.5, 1), else a one-line UsageError."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not (math.isfinite(t) and 0.5 < t < 1.0):
        raise UsageError(f"{option} {value} is outside (0.5, 1): give the confidence (highest class "
                         f"probability) a call needs, e.g. {option} 0.9")
    return t


def _probs_labels(probs: Any, labels: Any | None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, C) with C >= 2, got shape {p.shape}")
    if labels is None:
        return p, None
    y = np.asarray(labels).astype(np.int64)
    if y.shape != (len(p),):
        raise ValueError(f"labels shape {y.shape} does not fit {len(p)} cases")
    return p, y


def decide(probs: Any, threshold: float | None) -> np.ndarray:
    """(N,) decisions: the argmax class where confidence >= threshold, else ``NO_CALL`` (-1).
    ``threshold`` None: every case gets its argmax."""
    p, _ = _probs_labels(probs, None)
    pred = p.argmax(axis=1)
    if threshold is None:
        return pred
    return np.where(p.max(axis=1) >= float(threshold), pred, NO_CALL)


def state_name(decision: int, class_names: Sequence[str]) -> str:
    """One decision → its display state: a class name, ``LOW_CONFIDENCE`` or ``NO_POLYP``."""
    d = int(decision)
    return NO_POLYP if d == NO_POLYP_CALL else LOW_CONFIDENCE if d < 0 else class_names[d]


def state_names(decisions: Sequence[int] | np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Decisions → display states: a class name, ``LOW_CONFIDENCE`` or ``NO_POLYP``."""
    return [state_name(d, class_names) for d in decisions]


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def binary_rates(labels: Any, decisions: Any, positive: int = 1, z: float = Z95) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV (with Wilson intervals) and accuracy over the cases that
    got a call (decision >= 0); ``coverage`` = calls / cases."""
    y = np.asarray(labels).astype(np.int64)
    d = np.asarray(decisions).astype(np.int64)
    if y.shape != d.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and decisions {d.shape} must be the same 1-D shape")
    called = d >= 0
    pos_call, neg_call = called & (d == positive), called & (d != positive)
    pos_true = y == positive
    tp, fp = int(np.sum(pos_call & pos_true)), int(np.sum(pos_call & ~pos_true))
    tn, fn = int(np.sum(neg_call & ~pos_true)), int(np.sum(neg_call & pos_true))
    n_called = int(called.sum())
    return {
        "n": int(len(y)), "n_called": n_called, "coverage": _rate(n_called, len(y)),
        "accuracy": _rate(int(np.sum(called & (d == y))), n_called),
        "sensitivity": _rate(tp, tp + fn), "specificity": _rate(tn, tn + fp),
        "npv": _rate(tn, tn + fn), "npv_ci95": _ci(tn, tn + fn, z), "n_negative_calls": tn + fn,
        "ppv": _rate(tp, tp + fp), "ppv_ci95": _ci(tp, tp + fp, z), "n_positive_calls": tp + fp,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def _ci(k: int, n: int, z: float) -> list[float] | None:
    ci = wilson_interval(k, n, z)
    return None if ci is None else [ci[0], ci[1]]


def evaluate_operating_point(probs: Any, labels: Any, threshold: float | None, positive: int = 1,
                             npv_target: float = NPV_TARGET) -> dict[str, Any]:
    """``binary_rates`` of the calls at ``threshold`` (None: argmax, coverage 1), plus the threshold
    and whether the lower 95 % bound of the NPV reaches ``npv_target``."""
    p, y = _probs_labels(probs, labels)
    out = {"threshold": threshold, **binary_rates(y, decide(p, threshold), positive)}
    ci = out["npv_ci95"]
    out["npv_lower_clears_90"] = bool(ci is not None and ci[0] >= npv_target)
    return out


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float | None          # None: no threshold reaches the target (``reason`` says why)
    reason: str | None
    n: int                           # validation cases
    npv: float | None = None         # on validation, at the threshold
    ppv: float | None = None
    coverage: float | None = None
    n_negative_calls: int = 0
    n_positive_calls: int = 0
    ppv_target_met: bool = False     # False: NPV reached, PPV target not reachable with it
    note: str | None = None          # e.g. why the PPV target was dropped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scan(p: np.ndarray, y: np.ndarray, positive: int) -> dict[str, np.ndarray]:
    """Every distinct threshold in (0.5, 1) that changes the set of calls, with the counts at it."""
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    order = np.argsort(-conf, kind="mergesort")
    c, pos_call, pos_true = conf[order], pred[order] == positive, y[order] == positive
    # a prefix of the sorted cases is the set of calls at threshold c[i] when c[i] ends a tie group
    ends = np.flatnonzero(np.append(c[1:] != c[:-1], True))
    keep = ends[(c[ends] > 0.5) & (c[ends] < 1.0)]
    cum = lambda m: np.cumsum(m)[keep]  # noqa: E731
    return {"threshold": c[keep], "calls": keep + 1,
            "neg": cum(~pos_call), "tn": cum(~pos_call & ~pos_true),
            "pos": cum(pos_call), "tp": cum(pos_call & pos_true)}


def select_threshold(probs: Any, labels: Any, positive: int = 1, *, npv_target: float = NPV_TARGET,
                     ppv_target: float | None = None, min_calls: int = MIN_CALLS,
                     min_samples: int = MIN_THRESHOLD_SAMPLES) -> ThresholdChoice:
    """The confidence threshold in (0.5, 1) with the highest coverage on validation that reaches
    NPV >= ``npv_target`` (and PPV >= ``ppv_target``, when given, if any such threshold reaches both)."""
    p, y = _probs_labels(probs, labels)
    n = len(y)
    if n < min_samples:
        return ThresholdChoice(None, f"validation has {n} cases, fewer than the {min_samples} a threshold needs; "
                                     "no threshold stored", n)
    if np.unique(y == positive).size < 2:
        return ThresholdChoice(None, "validation holds one side only (all or none of the positive class); "
                                     "NPV and PPV cannot both be measured; no threshold stored", n)
    s = _scan(p, y, positive)
    with np.errstate(invalid="ignore", divide="ignore"):
        npv, ppv = s["tn"] / s["neg"], s["tp"] / s["pos"]
    npv_ok = (s["neg"] >= min_calls) & (npv >= npv_target)
    ppv_ok = (s["pos"] >= min_calls) & (ppv >= ppv_target) if ppv_target is not None else npv_ok
    both = npv_ok & ppv_ok
    if not npv_ok.any():
        counted = s["neg"] >= min_calls
        best = (f"the best is {100 * np.nanmax(npv[counted]):.1f} %" if counted.any()
                else f"no threshold leaves {min_calls} negative calls")
        return ThresholdChoice(None, f"NPV >= {100 * npv_target:g} % is not reached on validation at any "
                                     f"confidence threshold in (0.5, 1) ({best}); no threshold stored", n)
    i = int(np.flatnonzero(both)[-1]) if both.any() else int(np.flatnonzero(npv_ok)[-1])
    note = None if both.any() else (f"PPV >= {100 * ppv_target:g} % is not reached together with the NPV "
                                    f"target on validation; the threshold meets the NPV target only")
    return ThresholdChoice(
        float(s["threshold"][i]), None, n, npv=float(npv[i]),
        ppv=None if s["pos"][i] == 0 else float(ppv[i]), coverage=float(s["calls"][i] / n),
        n_negative_calls=int(s["neg"][i]), n_positive_calls=int(s["pos"][i]),
        ppv_target_met=bool(both.any() and ppv_target is not None), note=note)


def operating_point(val_probs: Any, val_labels: Any, test_probs: Any, test_labels: Any, positive: int = 1, *,
                    threshold: float | None = None, **select_kw: Any) -> dict[str, Any]:
    """The whole block for a report: the threshold (``threshold`` if given, else chosen on validation),
    its figures on test (NPV/PPV with Wilson intervals, coverage, ...), and the argmax rates on test.

    Without a threshold the threshold-level figures are None and ``reason`` says why."""
    if threshold is not None:
        threshold = validate_threshold(threshold)
        choice, source = None, "given"
    else:
        choice, source = select_threshold(val_probs, val_labels, positive, **select_kw), "validation"
        threshold = choice.threshold
    out: dict[str, Any]
    if threshold is None:
        keys = ("n", "n_called", "coverage", "accuracy", "sensitivity", "specificity", "npv", "npv_ci95",
                "n_negative_calls", "ppv", "ppv_ci95", "n_positive_calls")
        out = {"threshold": None, **{k: None for k in keys}, "npv_lower_clears_90": False}
    else:
        out = evaluate_operating_point(test_probs, test_labels, threshold, positive)
    out["threshold_source"] = source
    out["reason"] = choice.reason if choice is not None else None
    out["validation"] = choice.to_dict() if choice is not None else None
    out["argmax"] = evaluate_operating_point(test_probs, test_labels, None, positive)
    return out


def paired_difference(a: Any, b: Any, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``a`` − mean of ``b`` for per-case values of the same cases (e.g. "got a call" of two
    models on one test split), with a 95 % paired bootstrap interval (cases resampled, seeded)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"paired values need the same non-empty 1-D shape, got {x.shape} and {y.shape}")
    d = x - y
    idx = np.random.default_rng(seed).integers(0, len(d), (int(n_boot), len(d)))
    boots = d[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"difference": float(d.mean()), "ci95": [float(lo), float(hi)], "n": int(len(d)), "n_boot": int(n_boot)}
