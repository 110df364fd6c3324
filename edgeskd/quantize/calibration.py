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

    def fingerprint(self, contents: bool = False) -> str:
        """Identity of the exact calibration inputs (data rows + preprocessing). Image files count by
        path, and with ``contents`` also by their bytes (the calibration cache's key: images rewritten
        in place must not reuse ranges calibrated on the old ones)."""
        h = hashlib.sha256()
        h.update(json.dumps({"name": self.dataset.name, "format": self.dataset.format, "n": len(self.dataset),
                             "pre": [list(self.meta.input_size), list(self.meta.mean), list(self.meta.std),
                                     self.meta.channel_order]}).encode())
        h.update(np.asarray(self.indices, np.int64).tobytes())
        if self.dataset.paths is not None:
            h.update("\n".join(str(self.dataset.paths[i]) for i in self.indices).encode())
            for i in self.indices if contents else ():
                try:
                    with open(self.dataset.paths[i], "rb") as f:
                        h.update(hashlib.sha256(f.read()).digest())
                except OSError:   # a missing file is reported when the images are read
                    pass
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


CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class CalibSettings:
    """How one calibration method computes its ranges.

    ``quantize_static`` forwards only a few ``Calib*`` options to its calibrator and not the
    histogram sizes, so its entropy calibrator runs with 128 bins and 128 quantized bins: the KL
    search then has a single candidate (the whole histogram) and returns exactly the min/max
    range. edgeskd computes the ranges itself (``calibrate_ranges``) and hands them to
    ``quantize_static`` as a calibration cache. ``tag`` names the settings in the cache file, so
    ranges computed with other settings are never reused.
    """

    method: str
    collector: str                           # ONNX Runtime calibrator that gathers the statistics
    options: tuple[tuple[str, Any], ...]     # its create_calibrator options
    tag: str


CALIB_SETTINGS: dict[str, CalibSettings] = {
    "minmax": CalibSettings("minmax", "minmax", (), "minmax"),
    # TensorRT's entropy calibration: a 2048-bin histogram of |x|, thresholds from bin 128 up,
    # 128 quantized levels (calibration.entropy_amax on ONNX Runtime's |x| histograms).
    "entropy": CalibSettings("entropy", "percentile", (("num_bins", 2048), ("symmetric", True)), "entropy-trt2048"),
    "percentile": CalibSettings("percentile", "percentile",
                                (("num_bins", 2048), ("percentile", 99.999), ("symmetric", True)), "percentile"),
}


def calib_tag(method: str) -> str:
    """The calibration settings' name in a cache file name (``calibration.cache_path``)."""
    if method not in CALIB_SETTINGS:
        raise ValueError(f"calibration method {method!r}; use one of {CALIB_METHODS}")
    return CALIB_SETTINGS[method].tag


def cache_path(onnx_bytes: bytes, calib: CalibrationSet, method: str, directory: str | Path = DEFAULT_DIR,
               stem: str = "model") -> Path:
    """``calibration/<stem>-<model hash>-<data hash>-<method settings>.json`` (the settings tag, e.g.
    ``entropy-b2048q128``, keeps ranges computed with other histogram settings from being reused)."""

    mh = hashlib.sha256(onnx_bytes).hexdigest()[:12]
    return Path(directory) / f"{stem}-{mh}-{calib.fingerprint(contents=True)}-{calib_tag(method)}.json"


def entropy_amax(hist: np.ndarray, edges: np.ndarray, *, num_quant_bins: int = 128, start_bin: int = 128) -> float:
    """TensorRT's entropy calibration on a histogram of |x|: the clipping threshold whose
    ``num_quant_bins``-level quantization of the histogram is closest (KL divergence) to the
    histogram itself, with the values beyond the threshold folded into the last kept bin.

    Candidates are every bin edge from ``start_bin`` up (ties go to the widest range), as in
    TensorRT's and pytorch-quantization's entropy calibrators. For candidate i the bins [0, i) fall
    into ``num_quant_bins`` chunks; the quantized histogram spreads each chunk's count S over its C
    non-empty bins, so with P = total count and Q = sum(bins[:i])::

        KL = (Σ p log p − Σ_chunks S log(S / C) − tail · log q_last) / P − log P + log Q

    (p: the bins with the tail beyond i added to the last one) — prefix sums make every candidate
    O(num_quant_bins) instead of O(bins).
    """
    bins = np.asarray(hist, dtype=np.float64).copy()
    edges = np.asarray(edges, dtype=np.float64)
    n, nq = len(bins), int(num_quant_bins)
    if n <= start_bin or bins.sum() <= 0:
        return float(edges[-1])
    bins[0] = bins[1]                 # the zeros after a ReLU would otherwise decide the fit
    total = bins.sum()

    def xlogx(v: np.ndarray) -> np.ndarray:
        return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)

    cum = np.concatenate([[0.0], np.cumsum(bins)])
    nonempty = np.concatenate([[0], np.cumsum(bins > 0)])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(xlogx(bins))])
    cand = np.arange(start_bin, n + 1)
    bounds = -(-(np.arange(nq + 1)[None, :] * cand[:, None]) // nq)    # chunk k = [ceil(k i/nq), ceil((k+1) i/nq))
    S = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    C = nonempty[bounds[:, 1:]] - nonempty[bounds[:, :-1]]
    body = np.where(C > 0, S * np.log(np.where(C > 0, S, 1.0) / np.maximum(C, 1)), 0.0).sum(axis=1)
    tail = np.maximum(total - cum[cand], 0.0)
    last = bins[cand - 1]
    q_last = S[:, -1] / np.maximum(C[:, -1], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogq = body + np.where(tail > 0, tail * np.log(q_last), 0.0)
        plogp = cum_xlogx[cand - 1] + xlogx(last + tail)
        kl = (plogp - plogq) / total - np.log(total) + np.log(cum[cand])
    kl = np.where((tail > 0) & (last <= 0), np.inf, kl)   # the quantized histogram misses the tail's mass
    if not np.isfinite(kl).any():
        return float(edges[-1])
    best = np.flatnonzero(kl <= kl.min() + 1e-12 * abs(kl.min()))[-1]
    return float(edges[cand[best]])
