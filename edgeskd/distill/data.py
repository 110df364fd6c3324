"""The data a training run uses: loading and checking it, its positive class, its label bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeskd.distill.config import TrainConfig
from edgeskd.errors import ArtifactError, DataError


def load_training_data(cfg: TrainConfig):
    """The LabeledSet named by the config (the synthetic set by default), checked for training."""
    from edgeskd.data import load_dataset

    path = Path(cfg.data) if cfg.data is not None else None
    fmt = "synthetic" if path is None and cfg.format == "auto" else cfg.format
    # The synthetic set is rendered at the model's input size (what a camera at that resolution
    # delivers; 10x cheaper than rendering at 128 px and resizing).
    # every image is decoded once before training starts (and before OUT is written): a corrupt file
    # is named now, not when the teacher reaches it
    dataset = load_dataset(path, fmt, seed=cfg.data_seed, skip_bad=cfg.skip_bad, synthetic_n=cfg.synthetic_n,
                           img_size=cfg.img_size, verify=path is not None, group_by=cfg.group_by)
    check_trainable(dataset)
    return dataset


def load_training_data_for(checkpoint) -> Any:
    """The LabeledSet a checkpoint (path or loaded dict) was trained on: same data path, format,
    synthetic size/count/seed and splits — what ``edgeskd bench`` needs to reproduce the F1."""
    from dataclasses import fields as _fields

    from edgeskd.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    train_cfg = (ckpt.get("config") or {}).get("train")
    if not isinstance(train_cfg, dict):
        raise ArtifactError("the checkpoint records no training settings; pass --data explicitly")
    known = {f.name for f in _fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in train_cfg.items() if k in known})
    return load_training_data(cfg)


def check_trainable(dataset) -> None:
    counts = {s: int((dataset.splits == s).sum()) for s in ("train", "val", "test")}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"data set {dataset.name!r} has no {'/'.join(empty)} samples; training needs train, val "
                        "and test splits (give split folders / a split column, or let edgeskd make them)")
    train = dataset.split("train")
    missing = [dataset.class_names[c] for c in range(dataset.num_classes) if not (train.labels == c).any()]
    if missing:
        raise DataError(f"no training samples of class {', '.join(missing)}; every class needs examples")


def positive_class(dataset) -> int:
    """Index of the positive class (F1/AUC): the data set's own choice, else the last class that is
    not "no polyp" (``data.records.positive_class_index``, the rule `info` reports)."""
    from edgeskd.data.records import positive_class_index

    chosen = dataset.info.get("positive_class") if isinstance(dataset.info, dict) else None
    return positive_class_index(list(dataset.class_names), dataset.background_class, chosen)


def label_bits(dataset) -> float:
    """Extra label bits per sample, H(S) − H(C) = H(S | C), over the training labels."""
    train = dataset.split("train")

    def entropy(v: np.ndarray) -> float:
        _, c = np.unique(v, return_counts=True)
        p = c / c.sum()
        return float(-(p * np.log2(p)).sum())

    return entropy(train.subclasses) - entropy(train.labels)
