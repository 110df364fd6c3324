"""torch ``Dataset`` over a LabeledSet, through THE preprocessing (``edgeskd.runtime.preprocess``).

The only module of ``edgeskd.data`` that imports torch. Augmentation (``train=True``) works on the
uint8 image before preprocessing, so what the model sees is exactly what inference produces from
an augmented frame: random horizontal / vertical flips and 90° rotations (endoscopy and histology
have no canonical orientation) and a small brightness / contrast / saturation jitter.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeskd.data.base import LabeledSet
from edgeskd.errors import UsageError
from edgeskd.runtime.preprocess import preprocess

TARGETS = ("class", "subclass")


def augment(img: np.ndarray, rng: np.random.Generator, *, jitter: float = 0.1, rotate: bool = True) -> np.ndarray:
    """uint8 HWC → uint8 HWC: flips, a multiple of 90° rotation (``rotate``), colour jitter (±``jitter``)."""
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1]
    k = int(rng.integers(4))
    if rotate and k and img.shape[0] == img.shape[1]:
        img = np.rot90(img, k)
    if jitter > 0:
        b, c, s = 1.0 + rng.uniform(-jitter, jitter, 3)
        x = img.astype(np.float32)
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * s                       # saturation
        x = (x - x.mean()) * c + x.mean()               # contrast
        x = x * b                                       # brightness
        img = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


class ImageDataset(Dataset):
    """Items are ``(x, class_index, subclass_index)``: x float32 CHW from ``preprocess``.

    ``target`` ("class" | "subclass") names the label training uses; ``targets`` returns that
    label for every item (for samplers / class weights). Augmentation randomness comes from a
    per-item generator seeded by (``seed``, epoch set with ``set_epoch``, index), so runs are
    reproducible with any number of DataLoader workers.
    """

    def __init__(
        self,
        ls: LabeledSet,
        input_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
        target: str = "subclass",
        seed: int = 0,
        jitter: float = 0.1,
        rotate: bool = True,
    ) -> None:
        if target not in TARGETS:
            raise UsageError(f"target must be one of {TARGETS}, got {target!r}")
        self.ls = ls
        self.input_size = (int(input_size), int(input_size)) if np.isscalar(input_size) else \
            tuple(int(v) for v in input_size)  # type: ignore[union-attr]
        self.mean, self.std = tuple(mean), tuple(std)
        self.train, self.target, self.seed, self.jitter = bool(train), target, int(seed), float(jitter)
        self.rotate = bool(rotate)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ls)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def targets(self) -> np.ndarray:
        return self.ls.subclasses if self.target == "subclass" else self.ls.labels

    def __getitem__(self, i: int):
        img = self.ls.load_image(int(i))
        if self.train:
            img = augment(img, np.random.default_rng([self.seed, self.epoch, int(i)]), jitter=self.jitter,
                          rotate=self.rotate)
        x = preprocess(img, self.input_size, self.mean, self.std)[0]
        return torch.from_numpy(x), int(self.ls.labels[i]), int(self.ls.subclasses[i])
