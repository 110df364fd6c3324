"""Classification metrics in numpy (no sklearn, no torch): the runtime, bench and stream use these.

Evaluation is at class level (DESIGN.md §1): prediction = argmax of class probabilities; F1,
precision and recall of the positive class; ROC-AUC from P(positive); per-subclass accuracy.
Rates in [0, 1] from the helpers; ``classification_metrics`` reports percent (F1 drop = points).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class (sklearn's convention)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, positive: int = 1) -> tuple[float, float, float]:
    """Binary precision/recall/F1 of ``positive`` (one-vs-rest for >2 classes); 0 where undefined."""
    t = np.asarray(y_true) == positive
    p = np.asarray(y_pred) == positive
    tp = float(np.sum(t & p))
    fp = float(np.sum(~t & p))
    fn = float(np.sum(t & ~p))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return prec, rec, f1


def roc_auc(y_true_binary: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties); NaN if one class only."""
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    class_probs: np.ndarray,
    *,
    positive: int = 1,
    subclasses: np.ndarray | None = None,
    subclass_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Percent values (same keys and units as ``edgeskd.distill.evaluate.evaluate_logits``):
    ``f1``/``precision``/``recall`` of the positive class, ``accuracy``, ``auc`` (None with one
    class only), ``confusion`` (rows = true class), ``per_subclass_accuracy``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(class_probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"class_probs shape {probs.shape} does not fit {len(y_true)} labels")
    y_pred = probs.argmax(axis=1)
    prec, rec, f1 = precision_recall_f1(y_true, y_pred, positive)
    auc = roc_auc(y_true == positive, probs[:, positive]) if probs.shape[1] > positive else float("nan")
    pct = lambda v: round(100.0 * float(v), 4)  # noqa: E731
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "f1": pct(f1),
        "accuracy": pct(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        "precision": pct(prec),
        "recall": pct(rec),
        "auc": None if np.isnan(auc) else pct(auc),
        "confusion": confusion_matrix(y_true, y_pred, probs.shape[1]).tolist(),
    }
    if subclasses is not None:
        subclasses = np.asarray(subclasses, dtype=np.int64)
        per = {}
        for s in np.unique(subclasses):
            m = subclasses == s
            name = subclass_names[s] if subclass_names is not None and s < len(subclass_names) else str(int(s))
            per[name] = pct(np.mean(y_pred[m] == y_true[m]))
        out["per_subclass_accuracy"] = per
    return out


def evaluate_logits(logits: np.ndarray, meta: Any, labels: np.ndarray, subclasses: np.ndarray | None = None,
                    subclass_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A model's raw output (class or subclass logits, per ``meta.output``) → metrics in percent."""
    from edgeskd.runtime.postprocess import class_probabilities

    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] != meta.num_outputs:
        raise ValueError(f"logits {logits.shape} do not fit the model's {meta.num_outputs} outputs")
    return classification_metrics(labels, class_probabilities(logits, meta), positive=int(meta.positive_class),
                                  subclasses=subclasses, subclass_names=subclass_names)
