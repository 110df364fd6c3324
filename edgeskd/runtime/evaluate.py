"""Run any Runner over a LabeledSet split through the one inference preprocessing, torch-free.

Used by the export parity check, calibration, the INT8 accuracy gate and the benchmark.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from edgeskd.meta import ModelMeta
from edgeskd.runtime.metrics import evaluate_logits
from edgeskd.runtime.preprocess import preprocess_for


def preprocess_items(ls, meta: ModelMeta, indices: np.ndarray) -> np.ndarray:
    """Preprocessed float32 NCHW batch of the given rows (images may differ in size)."""
    if ls.images is not None:
        return preprocess_for(meta, ls.images[np.asarray(indices, dtype=np.intp)])
    imgs = [ls.load_image(int(i)) for i in indices]
    if len({im.shape for im in imgs}) == 1:
        return preprocess_for(meta, np.stack(imgs))
    return np.concatenate([preprocess_for(meta, im) for im in imgs])


def iter_batches(ls, meta: ModelMeta, batch_size: int = 64,
                 indices: np.ndarray | None = None) -> Iterator[np.ndarray]:
    idx = np.arange(len(ls)) if indices is None else np.asarray(indices, dtype=np.intp)
    for i in range(0, len(idx), batch_size):
        yield preprocess_items(ls, meta, idx[i:i + batch_size])


def predict(runner, ls, *, batch_size: int = 64, indices: np.ndarray | None = None) -> np.ndarray:
    """Raw logits of ``runner`` on the rows of ``ls`` (all of them by default)."""
    bs = batch_size if runner.max_batch is None else min(batch_size, runner.max_batch)
    outs = [runner.infer(x) for x in iter_batches(ls, runner.metadata, bs, indices)]
    if not outs:
        return np.zeros((0, runner.metadata.num_outputs), np.float32)
    return np.concatenate(outs)


def evaluate_runner(runner, ls, *, batch_size: int = 64) -> dict[str, Any]:
    """Class-level metrics (percent) of ``runner`` on all rows of ``ls``; also returns the logits."""
    logits = predict(runner, ls, batch_size=batch_size)
    out = evaluate_logits(logits, runner.metadata, ls.labels, ls.subclasses, ls.subclass_names)
    out["logits"] = logits
    return out


def predict_proba(runner, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(class probabilities (N, C), subclass probabilities (N, S) or None) for a preprocessed batch."""
    from edgeskd.runtime.postprocess import class_probabilities, subclass_probabilities

    logits = runner.infer(batch)
    return class_probabilities(logits, runner.metadata), subclass_probabilities(logits, runner.metadata)
