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


def _dihedral(img: np.ndarray, hflip: bool, vflip: bool, k: int) -> np.ndarray:
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    return np.rot90(img, k) if k else img


def _view_table() -> dict[tuple[bool, bool, int], int]:
    """(h-flip, v-flip, quarter turns) → index of the resulting element of the dihedral group D4
    (0 = identity; the 16 combinations give 8 distinct views)."""
    probe = np.arange(4).reshape(2, 2)
    seen: dict[bytes, int] = {}
    table = {}
    for h in (False, True):
        for v in (False, True):
            for k in range(4):
                key = np.ascontiguousarray(_dihedral(probe, h, v, k)).tobytes()
                table[(h, v, k)] = seen.setdefault(key, len(seen))
    return table


_VIEWS = _view_table()
N_VIEWS = 8   # distinct flips / quarter turns of a square image (the dihedral group D4)


def augment_view(img: np.ndarray, rng: np.random.Generator, *, jitter: float = 0.1,
                 rotate: bool = True) -> tuple[np.ndarray, int]:
    """uint8 HWC → (uint8 HWC, view): flips, a multiple of 90° rotation (``rotate``, square images
    only), colour jitter (±``jitter``). ``view`` (0–7, 0 = unchanged) names the flip / rotation the
    image got, so a distilling run can reuse the teacher's output for an item's view."""
    h, v = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    k = int(rng.integers(4))
    if not (rotate and img.shape[0] == img.shape[1]):
        k = 0
    img = _dihedral(img, h, v, k)
    if jitter > 0:
        b, c, s = 1.0 + rng.uniform(-jitter, jitter, 3)
        # saturation s about each pixel's grey, contrast c about the image mean (which saturation
        # keeps), brightness b, as one affine map: b·(c·(grey + s·(x − grey)) + (1 − c)·mean)
        x = img.astype(np.float32)
        grey = x.mean(axis=2, keepdims=True)
        x *= b * c * s
        x += grey * (b * c * (1.0 - s)) + (b * (1.0 - c) * float(grey.mean()) + 0.5)
        img = np.clip(x, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), _VIEWS[(h, v, k)]


class ImageDataset(Dataset):
    """Items are ``(x, class_index, subclass_index)``: x float32 CHW from ``preprocess``; with
    ``with_view=True`` also the flip / rotation ``view`` the item got (0–7, see ``augment_view``).

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
        with_view: bool = False,
    ) -> None:
        if target not in TARGETS:
            raise UsageError(f"target must be one of {TARGETS}, got {target!r}")
        self.ls = ls
        self.input_size = (int(input_size), int(input_size)) if np.isscalar(input_size) else \
            tuple(int(v) for v in input_size)  # type: ignore[union-attr]
        self.mean, self.std = tuple(mean), tuple(std)
        self.train, self.target, self.seed, self.jitter = bool(train), target, int(seed), float(jitter)
        self.rotate, self.with_view = bool(rotate), bool(with_view)
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
        view = 0
        if self.train:
            img, view = augment_view(img, np.random.default_rng([self.seed, self.epoch, int(i)]), jitter=self.jitter,
                                     rotate=self.rotate)
        x = preprocess(img, self.input_size, self.mean, self.std)[0]
        item = torch.from_numpy(x), int(self.ls.labels[i]), int(self.ls.subclasses[i])
        return (*item, view) if self.with_view else item
