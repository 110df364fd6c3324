"""Seeded, stratified splits whose per-stratum counts depend only on the stratum sizes."""

from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.15
VAL_FRACTION = 0.15
# Share of a train pool carved as val when a set has only train/test: the same val share of the
# whole set as a fresh 70/15/15 split, so writing a 70/15/15 set as train/test reads back the same.
VAL_FROM_TRAIN = VAL_FRACTION / (1.0 - TEST_FRACTION)


def stratified_split(
    strata: np.ndarray, seed: int, *, test: float = TEST_FRACTION, val: float = VAL_FRACTION
) -> np.ndarray:
    """Seeded split by stratum: test = round(test·n_s), then val = round(val/(1−test)·rest_s).

    Counts depend only on the stratum sizes; ``carve_split`` applied to train+val reproduces the
    same val counts (so a 70/15/15 set written with only train/test partitions reads back the same).
    """
    strata = np.asarray(strata)
    out = np.full(len(strata), "train", dtype=object)
    rng = np.random.default_rng([int(seed), 11])
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(np.floor(test * len(idx) + 0.5))
        out[idx[:n_test]] = "test"
    pool = out == "train"
    out[pool] = carve_split(strata[pool], seed, frac=val / (1.0 - test), name="val")
    return out


def carve_split(strata: np.ndarray, seed: int, *, frac: float, name: str) -> np.ndarray:
    """Split names for a pool: round(frac·n_s) per stratum become ``name``, the rest 'train'."""
    strata = np.asarray(strata)
    out = np.full(len(strata), "train", dtype=object)
    rng = np.random.default_rng([int(seed), 13, len(name)])
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        idx = idx[rng.permutation(len(idx))]
        k = int(np.floor(frac * len(idx) + 0.5))
        out[idx[:k]] = name
    return out
