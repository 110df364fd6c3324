"""Paired comparisons of two models' test F1: the mean difference and a bootstrap interval.

Method (``paired_bootstrap_f1``): the models are compared on the same test images in every seed.
One resample draws n test-image indices with replacement (n = the test split's size); the same
indices are applied to both models and to every seed, F1 (positive class, percent) is computed for
each model and seed on the resampled images, and the resample's statistic is the F1 difference
averaged over seeds (pooled over seeds). The 95 % interval is the 2.5th–97.5th percentile of that
statistic over the resamples (percentile bootstrap, a fixed seed). The interval reflects the
sampling of test images; with one seed it says nothing about the variance between training seeds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METHOD = ("paired percentile bootstrap over test images: each resample draws test-image indices with "
          "replacement, the same indices for both models and every seed; statistic = F1 difference "
          "(percentage points) averaged over seeds; 95 % interval = 2.5th-97.5th percentile")
N_RESAMPLES = 2000


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 in percent, 2·TP / (2·TP + FP + FN); 0 where the denominator is 0 (as sklearn's zero_division=0)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.divide(200.0 * tp, den, out=np.zeros_like(den), where=den > 0)


def _f1_per_resample(labels: np.ndarray, pred: np.ndarray, positive: int, indices: np.ndarray) -> np.ndarray:
    y, p = np.asarray(labels) == positive, np.asarray(pred) == positive
    tp, fp, fn = (y & p)[indices].sum(axis=1), (~y & p)[indices].sum(axis=1), (y & ~p)[indices].sum(axis=1)
    return f1_from_counts(tp, fp, fn)


def paired_bootstrap_f1(labels: Sequence[np.ndarray], pred_a: Sequence[np.ndarray], pred_b: Sequence[np.ndarray],
                        *, positive: int = 1, n_resamples: int = N_RESAMPLES, seed: int = 0,
                        indices: np.ndarray | None = None) -> dict:
    """F1(a) − F1(b) over seeds: the mean, the per-seed values and a 95 % paired bootstrap interval.

    ``labels[s]``, ``pred_a[s]``, ``pred_b[s]`` are seed s's test labels and the two models' predicted
    classes, every seed on the same n test images. ``indices`` ((R, n) ints) replaces the R random
    resamples (e.g. to enumerate every resample of a tiny case)."""
    if not (len(labels) == len(pred_a) == len(pred_b)) or not labels:
        raise ValueError("labels, pred_a and pred_b need one array per seed, at least one seed")
    n = len(labels[0])
    if n == 0 or any(len(v) != n for v in (*labels, *pred_a, *pred_b)):
        raise ValueError("every seed's labels and predictions must cover the same n > 0 test images")
    if indices is None:
        indices = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    indices = np.asarray(indices, dtype=np.intp)
    everything = np.arange(n)[None, :]
    per_seed, stats = [], np.zeros(len(indices))
    for y, a, b in zip(labels, pred_a, pred_b):
        per_seed.append(float((_f1_per_resample(y, a, positive, everything)
                               - _f1_per_resample(y, b, positive, everything))[0]))
        stats += _f1_per_resample(y, a, positive, indices) - _f1_per_resample(y, b, positive, indices)
    stats /= len(labels)
    lo, hi = (float(v) for v in np.percentile(stats, [2.5, 97.5]))
    return {"mean": round(float(np.mean(per_seed)), 4), "ci95": [round(lo, 4), round(hi, 4)],
            "excludes_zero": bool(lo > 0 or hi < 0), "per_seed": [round(v, 4) for v in per_seed],
            "n_images": int(n), "n_seeds": len(labels), "n_resamples": int(len(indices)), "seed": int(seed)}
