"""Seeded, stratified splits whose per-stratum counts depend only on the stratum sizes, and splits
that keep groups (video + polyp, patient) whole."""

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


# ----------------------------------------------------------------------------------------------
# Splits by group (scikit-learn's GroupShuffleSplit / StratifiedGroupKFold idea, in numpy): every
# group (video + polyp, patient ...) lands whole in one split; groups are stratified by their most
# common stratum, and each stratum's groups fill test, then val, up to the wanted share of its rows.
# ----------------------------------------------------------------------------------------------
def _group_strata(strata: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """The most common stratum of each group (ties: the smallest stratum value's index)."""
    _, s_idx = np.unique(strata, return_inverse=True)
    table = np.zeros((n_groups, int(s_idx.max()) + 1 if len(s_idx) else 1), np.int64)
    np.add.at(table, (inverse, s_idx), 1)
    return table.argmax(1)


def group_split(
    strata: np.ndarray, groups: np.ndarray, seed: int, *, test: float = TEST_FRACTION, val: float = VAL_FRACTION
) -> np.ndarray:
    """Split names (train / val / test) with every group whole in one split.

    Each group's stratum is the most common stratum of its rows. Groups are taken in stratum order
    (seeded order inside a stratum), each into the split furthest below its share of the rows
    taken so far — so every stratum is spread over the splits in proportion and even a handful
    of groups fills all three splits (scikit-learn's StratifiedGroupKFold idea, greedy)."""
    strata, groups = np.asarray(strata), np.asarray(groups)
    uniq, inverse = np.unique(groups.astype(str), return_inverse=True)
    rows = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    g_stratum = _group_strata(strata, inverse, len(uniq))
    rng = np.random.default_rng([int(seed), 17])
    order = np.lexsort((rng.permutation(len(uniq)), g_stratum))
    names = ("train", "val", "test")
    share = np.array([1.0 - test - val, val, test])
    taken = np.zeros(3)
    g_split = np.empty(len(uniq), dtype=object)
    for g in order:
        k = int(np.argmax(share * (taken.sum() + rows[g]) - taken))
        g_split[g] = names[k]
        taken[k] += rows[g]
    return g_split[inverse]


def carve_group_split(strata: np.ndarray, groups: np.ndarray, seed: int, *, frac: float, name: str) -> np.ndarray:
    """Split names for a pool: whole groups adding up to about ``frac`` of each stratum's rows
    become ``name``, the rest 'train' (``carve_split`` by group)."""
    out = group_split(strata, groups, seed + 7919 * len(name), test=frac, val=0.0)
    return np.where(out == "test", name, "train").astype(object)


def straddling_groups(groups: np.ndarray, splits: np.ndarray) -> dict[str, list[str]]:
    """Groups found in more than one split: {group: [splits...]} (leakage between splits)."""
    groups, splits = np.asarray(groups).astype(str), np.asarray(splits).astype(str)
    pairs = np.unique(np.stack([groups, splits], 1), axis=0) if len(groups) else np.empty((0, 2), str)
    found: dict[str, list[str]] = {}
    for g, sp in pairs:
        found.setdefault(str(g), []).append(str(sp))
    return {g: sorted(sps) for g, sps in found.items() if len(sps) > 1}
