"""Classification metrics, numpy only (no sklearn, no torch): training, bench, build-engine and the
stream all measure with these functions.

Evaluation is at class level: the prediction is the argmax of the class probabilities (for a
subclass-logit model, softmax over the logsumexp of each class's subclass block; a model's raw
output goes through ``edgeskd.runtime.evaluate.evaluate_logits``, which applies the runtime's
post-processing and then ``probability_metrics``); precision, recall and F1 are those of the
positive class; ROC-AUC is computed from P(positive); accuracy is also reported within each data
subclass.

Units: every function returns **fractions** in [0, 1]. Percent appears only where results are
written or shown, through ``as_percent`` (metrics.json, bench.json, build reports); the stream's
stats JSON keeps fractions, rounded by ``present``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

# Keys of a metrics dict that hold rates (fractions); ``n`` and ``confusion`` are counts.
RATE_KEYS = ("f1", "f1_macro", "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "auc",
             "subclass_accuracy", "per_subclass_accuracy")
# ... and of the "presence" block of a model with a "no polyp" class (``edgeskd.runtime.polyp_view``)
PRESENCE_RATE_KEYS = ("sensitivity", "false_presence", "auc")
PRESENCE_CI_KEYS = ("sensitivity_ci95", "false_presence_ci95")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class (sklearn's convention)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of equal labels; 0 for no samples."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (0.0 for no samples)."""
    y_true = np.asarray(y_true)
    classes = np.unique(y_true)
    if not len(classes):
        return 0.0
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def _specificity(y_true: np.ndarray, y_pred: np.ndarray, positive: int) -> float | None:
    neg = np.asarray(y_true) != positive
    return float(np.mean(np.asarray(y_pred)[neg] != positive)) if neg.any() else None


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, positive: int = 1) -> tuple[float, float, float]:
    """Precision, recall and F1 of class ``positive`` (one-vs-rest); 0 where undefined (sklearn's
    ``zero_division=0``)."""
    t = np.asarray(y_true) == positive
    p = np.asarray(y_pred) == positive
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return precision, recall, f1


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float | None:
    """Mean F1 over the classes that occur in ``y_true`` or ``y_pred`` (sklearn's ``average="macro"``);
    None for no samples."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = [c for c in range(num_classes) if np.any(y_true == c) or np.any(y_pred == c)]
    if not present:
        return None
    return float(np.mean([precision_recall_f1(y_true, y_pred, c)[2] for c in present]))


def roc_auc(y_true_binary: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve: the Mann–Whitney U statistic with average ranks for tied scores
    (equal to sklearn's ``roc_auc_score``); None when only one class is present."""
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)   # 1-based average rank of each tie group
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def per_subclass_accuracy(y_true: np.ndarray, y_pred: np.ndarray, subclasses: np.ndarray,
                          subclass_names: Sequence[str] | None = None) -> dict[str, float]:
    """Class accuracy within each data subclass present, keyed by subclass name (index if unnamed)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    subclasses = np.asarray(subclasses, dtype=np.int64)
    names = list(subclass_names) if subclass_names is not None else []
    out: dict[str, float] = {}
    for s in np.unique(subclasses):
        m = subclasses == s
        out[names[s] if s < len(names) else str(int(s))] = accuracy(y_true[m], y_pred[m])
    return out


def subclass_accuracy(subclass_pred: np.ndarray, subclasses: np.ndarray) -> float:
    """Share of samples whose predicted subclass is their data subclass (a model that predicts the
    data's own subclasses)."""
    return accuracy(np.asarray(subclasses, dtype=np.int64), np.asarray(subclass_pred, dtype=np.int64))


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, positive: int) -> dict[str, Any]:
    """``accuracy``, ``f1`` of ``positive`` and ``f1_macro`` of predicted labels (no probabilities, as
    for per-frame decisions); all None for no samples."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if not len(y_true):
        return {"accuracy": None, "f1": None, "f1_macro": None}
    return {"accuracy": accuracy(y_true, y_pred), "f1": precision_recall_f1(y_true, y_pred, positive)[2],
            "f1_macro": macro_f1(y_true, y_pred, num_classes)}


def probability_metrics(y_true: np.ndarray, class_probs: np.ndarray, *, positive: int = 1,
                        subclasses: np.ndarray | None = None,
                        subclass_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of (N, C) class probabilities: ``n``, ``f1``/``precision``/``recall`` of ``positive``,
    ``specificity`` (recall of the other classes as one), ``accuracy``, ``balanced_accuracy`` (mean recall
    over the classes present: a model that leans to one class cannot hide behind F1), ``auc`` (None with
    one class only), ``confusion`` (rows = true class) and, with ``subclasses``, ``per_subclass_accuracy``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(class_probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"class probabilities of shape {probs.shape} do not fit {len(y_true)} labels")
    y_pred = probs.argmax(axis=1)
    precision, recall, f1 = precision_recall_f1(y_true, y_pred, positive)
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "f1": f1,
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "precision": precision,
        "recall": recall,
        "specificity": _specificity(y_true, y_pred, positive),
        "auc": roc_auc(y_true == positive, probs[:, positive]) if probs.shape[1] > positive else None,
        "confusion": confusion_matrix(y_true, y_pred, probs.shape[1]).tolist(),
    }
    if subclasses is not None:
        out["per_subclass_accuracy"] = per_subclass_accuracy(y_true, y_pred, subclasses, subclass_names)
    return out


# -- presentation ---------------------------------------------------------------------------------
def present(metrics: Mapping[str, Any], *, scale: float, digits: int) -> dict[str, Any]:
    """A copy of ``metrics`` with every rate (``RATE_KEYS``) multiplied by ``scale`` and rounded to
    ``digits``; counts and None stay as they are."""

    def one(v: Any) -> Any:
        return None if v is None else round(scale * float(v), digits)

    out = dict(metrics)
    for k in RATE_KEYS:
        if k in out:
            v = out[k]
            out[k] = {name: one(x) for name, x in v.items()} if isinstance(v, Mapping) else one(v)
    if isinstance(out.get("presence"), Mapping):
        pres = dict(out["presence"])
        for k in PRESENCE_RATE_KEYS:
            if k in pres:
                pres[k] = one(pres[k])
        for k in PRESENCE_CI_KEYS:
            if pres.get(k) is not None:
                pres[k] = [one(x) for x in pres[k]]
        out["presence"] = pres
    return out


def as_percent(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Rates in percent with 4 decimals: the unit of metrics.json, bench.json and build reports
    (an F1 difference there is in points)."""
    return present(metrics, scale=100.0, digits=4)
