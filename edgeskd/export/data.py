"""Which data an artifact belongs to: the checkpoint's training data (from its config), or a path
the user gives. Parity checks, calibration and the accuracy gate read their samples through this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeskd.errors import DataError


def data_ref_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """{"data", "format", "seed", "synthetic_n", "img_size", "skip_bad"} from an ``edgeskd train`` checkpoint.

    ``img_size`` matters for the synthetic set: training renders it at the model's input size, so
    evaluation must render it at the same size to see the same images."""
    cfg = (ckpt.get("config") or {}).get("train") or {}
    if not cfg:
        return None
    return {
        "data": cfg.get("data"),
        "format": cfg.get("format", "auto"),
        "seed": int(cfg.get("data_seed", 0)),
        "synthetic_n": cfg.get("synthetic_n"),
        "img_size": cfg.get("img_size"),
        "skip_bad": bool(cfg.get("skip_bad", False)),
    }


def load_data(ref: dict[str, Any] | None = None, *, path: str | Path | None = None, fmt: str = "auto",
              seed: int | None = None):
    """A LabeledSet: ``path`` (user's choice) wins over ``ref`` (the artifact's training data)."""
    try:
        from edgeskd.data import load_dataset
    except ImportError:  # the data package is not available in this build
        raise DataError("no data loader available; pass the data set explicitly") from None
    kw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise DataError(f"data {p} does not exist; give an MHIST root, folder tree or manifest CSV")
        return load_dataset(p, fmt, **({"seed": seed} if seed is not None else {}))
    ref = ref or {}
    p = Path(ref["data"]) if ref.get("data") else None
    if p is not None and not p.exists():
        raise DataError(f"the model was trained on {p}, which is not here; pass --data (or --calib-data) to point at it")
    f = ref.get("format", "auto")
    if p is None and f == "auto":
        f = "synthetic"
    kw["seed"] = int(ref.get("seed", 0) if seed is None else seed)
    if ref.get("synthetic_n"):
        kw["synthetic_n"] = int(ref["synthetic_n"])
    if ref.get("img_size") and f == "synthetic":
        kw["img_size"] = int(ref["img_size"])
    if ref.get("skip_bad"):
        kw["skip_bad"] = True
    return load_dataset(p, f, **kw)


def check_compatible_data(ls, meta) -> None:
    """The data must have the model's classes (names and order)."""
    if list(ls.class_names) != list(meta.class_names):
        raise DataError(
            f"data set classes {list(ls.class_names)} differ from the model's {list(meta.class_names)}; "
            "give the data the model was trained on"
        )


def align_classes(ls, meta):
    """``ls`` with labels renumbered to the model's class order when the names match in another
    order (a folder tree sorts class folders alphabetically); DataError if the names differ."""
    import dataclasses

    import numpy as np

    data_names, model_names = list(ls.class_names), list(meta.class_names)
    if data_names == model_names:
        return ls
    if sorted(data_names) != sorted(model_names):
        check_compatible_data(ls, meta)   # raises with both lists
    perm = np.array([model_names.index(n) for n in data_names], dtype=np.int64)
    return dataclasses.replace(ls, class_names=model_names, labels=perm[np.asarray(ls.labels, dtype=np.int64)])
