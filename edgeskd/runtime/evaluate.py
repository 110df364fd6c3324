"""The one evaluation loop, torch-free: a labelled data set's rows through the inference
preprocessing (``preprocess_for``, un-augmented), in batches, into any Runner.

Training (torch models), the export parity check, calibration, the INT8 accuracy gate and the
benchmark all read their inputs through ``EvalInputs``, so a runner that reproduces a model's
logits reproduces its metrics to the digit. ``evaluate_logits`` turns a model's raw output into
metrics (fractions, ``edgeskd.metrics``).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from edgeskd.meta import ModelMeta
from edgeskd.metrics import probability_metrics, subclass_accuracy
from edgeskd.runtime.postprocess import class_probabilities
from edgeskd.runtime.preprocess import preprocess_for

# Preprocessed inputs are kept in memory up to this size (validation runs every epoch); larger
# sets are preprocessed again at each pass.
CACHE_BYTES = 768 * 2**20


def preprocess_items(dataset, meta: ModelMeta, indices: np.ndarray) -> np.ndarray:
    """Preprocessed float32 NCHW batch of the given rows of a LabeledSet (images may differ in size)."""
    if dataset.images is not None:
        return preprocess_for(meta, dataset.images[np.asarray(indices, dtype=np.intp)])
    imgs = [dataset.load_image(int(i)) for i in indices]
    if len({im.shape for im in imgs}) == 1:
        return preprocess_for(meta, np.stack(imgs))
    return np.concatenate([preprocess_for(meta, im) for im in imgs])


class EvalInputs:
    """The preprocessed inputs of a LabeledSet (or one split of it), in batches of ``batch_size``.

    ``indices`` restricts to some rows (a DDP shard, a calibration pick). Passes after the first are
    served from memory when the whole set fits in ``cache_bytes`` (0 = never keep them).
    """

    def __init__(self, dataset, meta: ModelMeta, *, batch_size: int = 128, indices: np.ndarray | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.dataset = dataset
        self.meta = meta
        self.batch_size = int(batch_size)
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.intp)
        per_item = 4 * 3 * meta.input_size[0] * meta.input_size[1]
        self._cache: list[np.ndarray] | None = [] if 0 < per_item * len(self.indices) <= cache_bytes else None
        self._complete = False

    @property
    def ls(self):
        """The data set (the name the training loop reads)."""
        return self.dataset

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels[self.indices]

    @property
    def subclasses(self) -> np.ndarray:
        return self.dataset.subclasses[self.indices]

    def batches(self) -> Iterator[np.ndarray]:
        if self._complete and self._cache is not None:
            yield from self._cache
            return
        cache: list[np.ndarray] = []
        for start in range(0, len(self.indices), self.batch_size):
            x = preprocess_items(self.dataset, self.meta, self.indices[start:start + self.batch_size])
            if self._cache is not None:
                cache.append(x)
            yield x
        if self._cache is not None:
            self._cache, self._complete = cache, True


def evaluate_logits(logits: np.ndarray, meta: ModelMeta, labels: np.ndarray, subclasses: np.ndarray | None = None,
                    subclass_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics (fractions) of a model's raw outputs: class or subclass logits, as ``meta.output`` says.

    The keys of ``probability_metrics`` (of the calibrated class probabilities: the argmax, hence
    F1 and accuracy, do not depend on ``meta.temperature``) with the positive class ``meta.positive_class``, and, for a
    model that predicts the data's own subclasses (same names), ``subclass_accuracy``.

    A model with a background ("no polyp") class: those keys on the cases that show a polyp, from
    the probabilities conditional on a polyp (``edgeskd.runtime.polyp_view``; ``confusion`` is over
    the polyp classes), plus ``presence`` (``presence_figures`` at the artifact's presence threshold).
    """
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} do not match {len(labels)} labels")
    if logits.shape[1] != meta.num_outputs:
        raise ValueError(f"logits have {logits.shape[1]} columns, the model's metadata says {meta.num_outputs}")
    from edgeskd.runtime.polyp_view import polyp_view, view_presence

    view = polyp_view(logits, meta, labels)
    subs = view.rows(subclasses)
    out = probability_metrics(view.labels, class_probabilities(view.logits, view.meta),
                              positive=int(view.meta.positive_class), subclasses=subs, subclass_names=subclass_names)
    if (subclasses is not None and meta.output == "subclass_logits" and subclass_names is not None
            and list(meta.subclass_names) == list(subclass_names)):
        out["subclass_accuracy"] = subclass_accuracy(logits[view.mask].argmax(axis=1), subs)
    if view.has_background:
        out["presence"] = view_presence(view, meta)
        out["n_no_polyp"] = int((~view.mask).sum())
    return out


def predict(runner, dataset, *, batch_size: int = 64, indices: np.ndarray | None = None) -> np.ndarray:
    """Raw logits of ``runner`` on the rows of ``dataset`` (all of them by default)."""
    bs = batch_size if runner.max_batch is None else min(batch_size, runner.max_batch)
    inputs = EvalInputs(dataset, runner.metadata, batch_size=bs, indices=indices, cache_bytes=0)
    outs = [runner.infer(x) for x in inputs.batches()]
    if not outs:
        return np.zeros((0, runner.metadata.num_outputs), np.float32)
    return np.concatenate(outs)


def evaluate_runner(runner, dataset, *, batch_size: int = 64) -> dict[str, Any]:
    """Class-level metrics (fractions, ``evaluate_logits``) of ``runner`` on all rows
    of ``dataset``, plus the logits under ``"logits"``."""
    logits = predict(runner, dataset, batch_size=batch_size)
    out = evaluate_logits(logits, runner.metadata, dataset.labels, dataset.subclasses, dataset.subclass_names)
    out["logits"] = logits
    return out


def predict_proba(runner, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(class probabilities (N, C), subclass probabilities (N, S) or None) for a preprocessed batch;
    the class probabilities are calibrated with the artifact's temperature(s) (``class_probabilities``)."""
    from edgeskd.runtime.postprocess import class_probabilities, subclass_probabilities

    logits = runner.infer(batch)
    return class_probabilities(logits, runner.metadata), subclass_probabilities(logits, runner.metadata)
