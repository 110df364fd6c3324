"""--tune: T and α for each distillation mode (kd, skd), chosen on validation F1.

Every (T, α) cell of the grid is one student per seed, trained with the same budget as any other
student: the same epochs, seeds, initial weights (per mode) and batches (they train in one group on
the same data order). Its epoch is selected on validation F1 like every model's; the cell whose
selected validation F1, averaged over seeds, is highest wins (ties: validation AUC, then grid
order). The test split plays no part; the chosen cell's students are the ones reported.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

SELECTION = "mean over seeds of the selected epoch's validation F1 (ties: validation AUC, then grid order)"
NOISY_BELOW = 50   # validation images: fewer make the choice noisy


def cell_name(mode: str, temperature: float, alpha: float) -> str:
    """The model name of one grid cell, e.g. student-kd@T2-a0.5."""
    return f"student-{mode}@T{temperature:g}-a{alpha:g}"


def _mean(values: Sequence[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


def choose(grid: dict[tuple[float, float], Sequence[Any]]) -> tuple[tuple[float, float], list[dict]]:
    """``grid``: (T, α) → that cell's trained students, one per seed (anything with a ``.val``
    metrics dict). Returns the chosen (T, α) and one row per cell (T, α, mean val F1, per-seed val
    F1, mean val AUC). Only validation metrics are read."""
    rows = []
    for (t, a), runs in grid.items():
        f1s = [r.val.get("f1") for r in runs]
        rows.append({"temperature": t, "alpha": a, "val_f1": _round(_mean(f1s)), "val_f1_per_seed": f1s,
                     "val_auc": _round(_mean([r.val.get("auc") for r in runs]))})

    def key(i: int) -> tuple:
        r = rows[i]
        return (_or(r["val_f1"]), _or(r["val_auc"]), -i)

    best = max(range(len(rows)), key=key)
    return (rows[best]["temperature"], rows[best]["alpha"]), rows


def _or(v: float | None) -> float:
    return -1.0 if v is None else v


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
