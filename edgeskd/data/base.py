"""One in-memory description for every data format (MHIST, folder tree, CSV manifest, synthetic)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
IN_MEMORY_BYTES = 1 << 30   # LabeledSet.in_memory's default cap: decoded images kept up to this size


@dataclass
class LabeledSet:
    """Images (file paths or an in-memory uint8 NHWC array) with class and subclass labels.

    Subclass blocks are contiguous per class: ``subclass_to_class`` is non-decreasing.
    ``votes`` (optional) holds per-sample annotator votes for the positive class (-1 = unknown).
    ``background_class`` (optional) is the index of the "no polyp" class (frames with no lesion in
    view; its subclasses are kinds of bare wall); ``groups`` (optional, (N,) str) is each sample's
    group id (video + polyp, patient ...): splits keep a group whole.
    """

    name: str
    format: str                                  # "mhist" | "folder" | "manifest" | "synthetic"
    class_names: list[str]
    subclass_names: list[str]
    subclass_to_class: list[int]
    labels: np.ndarray                           # (N,) int64 class index
    subclasses: np.ndarray                       # (N,) int64 subclass index
    splits: np.ndarray                           # (N,) str: train / val / test
    paths: list[Path] | None = None              # absolute paths, or None for in-memory images
    images: np.ndarray | None = None             # (N, H, W, 3) uint8 RGB, or None for files
    votes: np.ndarray | None = None              # (N,) int64 or None
    root: Path | None = None
    n_annotators: int = 7
    background_class: int | None = None          # index of the "no polyp" class, or None
    groups: np.ndarray | None = None             # (N,) str group id per sample, or None
    info: dict[str, Any] = field(default_factory=dict)  # format-specific notes (e.g. vote disagreements);
    # per-sample np.ndarray entries of length N (synthetic "true_labels", ...) are subset along with the rows

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.subclasses = np.asarray(self.subclasses, dtype=np.int64)
        self.splits = np.asarray(self.splits, dtype=object)
        if self.votes is not None:
            self.votes = np.asarray(self.votes, dtype=np.int64)
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=object)
        n = len(self.labels)
        if (self.paths is None) == (self.images is None):
            raise ValueError("LabeledSet needs exactly one of paths or images")
        if self.background_class is not None and not 0 <= self.background_class < len(self.class_names):
            raise ValueError(f"background_class {self.background_class} is not a class index")
        for arr_name in ("subclasses", "splits") + (("groups",) if self.groups is not None else ()):
            if len(getattr(self, arr_name)) != n:
                raise ValueError(f"{arr_name} length differs from labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_subclasses(self) -> int:
        return len(self.subclass_names)

    def subset(self, mask_or_index: np.ndarray | str) -> "LabeledSet":
        """Rows selected by a boolean mask, an index array, or a split name."""
        if isinstance(mask_or_index, str):
            idx = np.flatnonzero(self.splits == mask_or_index)
        else:
            m = np.asarray(mask_or_index)
            idx = np.flatnonzero(m) if m.dtype == bool else m.astype(np.intp)
        n = len(self)
        info = {k: (v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n else v)
                for k, v in self.info.items()}  # per-sample arrays (e.g. synthetic true labels) follow
        return replace(
            self,
            info=info,
            labels=self.labels[idx],
            subclasses=self.subclasses[idx],
            splits=self.splits[idx],
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            images=self.images[idx] if self.images is not None else None,
            votes=self.votes[idx] if self.votes is not None else None,
            groups=self.groups[idx] if self.groups is not None else None,
        )

    @property
    def polyp_mask(self) -> np.ndarray:
        """(N,) bool: samples not of the background class (all True without one)."""
        if self.background_class is None:
            return np.ones(len(self), bool)
        return self.labels != self.background_class

    def split(self, name: str) -> "LabeledSet":
        return self.subset(name)

    def in_memory(self, max_bytes: int = IN_MEMORY_BYTES) -> "LabeledSet":
        """This set with its images decoded into one uint8 array, when they are files of one shape
        that fit in ``max_bytes``; otherwise itself. A training loop reads every image once per
        epoch: decoding a small PNG costs about as much as augmenting it."""
        if self.images is not None or not len(self):
            return self
        first = self.load_image(0)
        if first.nbytes * len(self) > max_bytes:
            return self
        images = np.empty((len(self), *first.shape), np.uint8)
        images[0] = first
        for i in range(1, len(self)):
            img = self.load_image(i)
            if img.shape != first.shape:
                return self
            images[i] = img
        return replace(self, paths=None, images=images)

    def load_image(self, i: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB image i."""
        if self.images is not None:
            return self.images[i]
        from edgeskd.data.images import read_image  # lazy: PIL

        return read_image(self.paths[i])  # type: ignore[index]
