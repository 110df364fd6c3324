"""Calibration sets: seeded, stratified by subclass, drawn from the training split (or a data set the
user names), passed through exactly the inference preprocessing. Calibrated ranges are cached under
``calibration/`` keyed by the model and the exact images, so a rebuild does not recalibrate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeskd.errors import DataError, UsageError
from edgeskd.meta import ModelMeta

MIN_RECOMMENDED = 300
DEFAULT_SIZE = 512
DEFAULT_DIR = Path("calibration")


def stratified_indices(strata: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` row indices, proportional per stratum (at least one per non-empty stratum), seeded."""
    strata = np.asarray(strata)
    n = len(strata)
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    quota = np.array([len(g) for g in groups], dtype=np.float64) * size / n
    take = np.maximum(np.floor(quota).astype(int), 1)
    # hand out the remainder by largest fractional part, never past a group's size
    rest = size - take.sum()
    order = np.argsort(-(quota - np.floor(quota)))
    i = 0
    while rest > 0 and i < 10 * len(order):
        g = order[i % len(order)]
        if take[g] < len(groups[g]):
            take[g] += 1
            rest -= 1
        i += 1
    while take.sum() > size:   # more strata than images requested
        take[np.argmax(take)] -= 1
    picked = [rng.choice(g, min(t, len(g)), replace=False) for g, t in zip(groups, take)]
    return np.sort(np.concatenate(picked))


@dataclass
class CalibrationSet:
    """The chosen rows of a data set; images are preprocessed lazily (a cache hit never loads them)."""

    dataset: Any
    meta: ModelMeta
    indices: np.ndarray
    source: str
    batch_size: int = 32
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def fingerprint(self) -> str:
        """Identity of the exact calibration inputs (data rows + preprocessing)."""
        h = hashlib.sha256()
        h.update(json.dumps({"name": self.dataset.name, "format": self.dataset.format, "n": len(self.dataset),
                             "pre": [list(self.meta.input_size), list(self.meta.mean), list(self.meta.std),
                                     self.meta.channel_order]}).encode())
        h.update(np.asarray(self.indices, np.int64).tobytes())
        if self.dataset.paths is not None:
            h.update("\n".join(str(self.dataset.paths[i]) for i in self.indices).encode())
        else:
            for i in self.indices:
                h.update(np.ascontiguousarray(self.dataset.images[i]).tobytes())
        return h.hexdigest()[:16]

    def batches(self) -> Iterator[np.ndarray]:
        from edgeskd.runtime.evaluate import EvalInputs

        inputs = EvalInputs(self.dataset, self.meta, batch_size=self.batch_size, indices=self.indices, cache_bytes=0)
        return inputs.batches()

    def reader(self, input_name: str = "input"):
        """An onnxruntime CalibrationDataReader over the preprocessed batches."""
        from onnxruntime.quantization import CalibrationDataReader

        cs = self

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = cs.batches()

            def get_next(self) -> dict[str, np.ndarray] | None:
                x = next(self._it, None)
                return None if x is None else {input_name: x}

            def rewind(self) -> None:
                self._it = cs.batches()

        return _Reader()


def select_calibration(dataset, meta: ModelMeta, *, size: int = DEFAULT_SIZE, seed: int = 0, batch_size: int = 32,
                       split: str | None = "train", source: str = "") -> CalibrationSet:
    """Stratified (by subclass), seeded pick of ``size`` images from ``split`` of ``dataset``.

    Fewer than 300 images → a warning in ``.warnings``; none, or fewer than one batch → DataError.
    """
    if size < 1:
        raise UsageError(f"--calib-size {size} must be >= 1")
    if batch_size < 1:
        raise UsageError(f"calibration batch {batch_size} must be >= 1")
    sub = dataset
    if split is not None and (dataset.splits == split).any():
        sub = dataset.split(split)
    elif split is not None and len(dataset) and set(np.unique(dataset.splits)) - {split}:
        # no such split (e.g. a test-only set): use everything the user gave
        sub = dataset
    n_avail = len(sub)
    if n_avail == 0:
        raise DataError(f"calibration data {source or dataset.name} is empty; give --calib-data with >= {MIN_RECOMMENDED} images")
    idx = stratified_indices(sub.subclasses, size, seed)
    if len(idx) < batch_size:
        raise DataError(
            f"calibration set has {len(idx)} images, fewer than one batch ({batch_size}); give --calib-data with "
            f">= {MIN_RECOMMENDED} representative images"
        )
    warnings = []
    if len(idx) < MIN_RECOMMENDED:
        warnings.append(f"calibrating on only {len(idx)} images (< {MIN_RECOMMENDED}); INT8 ranges may be poor — "
                        "give --calib-data with more representative images")
    where = f"{source or dataset.name} {split if sub is not dataset else 'all'}"
    return CalibrationSet(sub, meta, idx, f"{len(idx)} images of {where} (seed {seed})", batch_size, warnings)


def cache_path(onnx_bytes: bytes, calib: CalibrationSet, method: str, directory: str | Path = DEFAULT_DIR,
               stem: str = "model") -> Path:
    """``calibration/<stem>-<model hash>-<data hash>-<method>.json``."""
    mh = hashlib.sha256(onnx_bytes).hexdigest()[:12]
    return Path(directory) / f"{stem}-{mh}-{calib.fingerprint()}-{method}.json"
