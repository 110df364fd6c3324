"""Class-level evaluation shared by training, bench and quickstart.

Everything goes through the runtime's numpy code: ``preprocess_for`` (un-augmented inputs) and
``class_probabilities`` (logsumexp over subclass blocks), so any runner that reproduces a model's
logits reproduces its F1 to the digit. Metrics are in percent.

* ``evaluate_logits(logits, meta, labels, subclasses, subclass_names)`` — raw model output → metrics
* ``evaluate_model(model, meta, labeled_set)`` — torch model on a LabeledSet split → metrics
* ``predict_logits(model, inputs)`` / ``EvalInputs`` — batched inference on preprocessed inputs
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeskd.meta import ModelMeta
from edgeskd.runtime.postprocess import class_probabilities, softmax

# Preprocessed evaluation inputs are cached in memory up to this size; larger sets stream.
CACHE_BYTES = 768 * 2**20


def evaluate_logits(
    logits: np.ndarray,
    meta: ModelMeta,
    labels: np.ndarray,
    subclasses: np.ndarray | None = None,
    subclass_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of one model's raw outputs (class or subclass logits, as ``meta.output`` says).

    Returns percent values ``f1`` (positive class = ``meta.positive_class``), ``accuracy``,
    ``precision``, ``recall``, ``auc`` (from P(positive); None if the split has one class only),
    ``per_subclass_accuracy`` (class accuracy within each *data* subclass), ``confusion`` (rows =
    true class) and, for a model that predicts the data's own subclasses, ``subclass_accuracy``.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} do not match {len(labels)} labels")
    if logits.shape[1] != meta.num_outputs:
        raise ValueError(f"logits have {logits.shape[1]} columns, the model's metadata says {meta.num_outputs}")
    probs = class_probabilities(logits, meta)
    pred = probs.argmax(axis=1)
    pos = int(meta.positive_class)
    y_pos, p_pos = labels == pos, pred == pos
    pct = lambda v: round(100.0 * float(v), 4)  # noqa: E731
    out: dict[str, Any] = {
        "n": int(len(labels)),
        "f1": pct(f1_score(y_pos, p_pos, zero_division=0)),
        "accuracy": pct(accuracy_score(labels, pred)),
        "precision": pct(precision_score(y_pos, p_pos, zero_division=0)),
        "recall": pct(recall_score(y_pos, p_pos, zero_division=0)),
        "auc": pct(roc_auc_score(y_pos, probs[:, pos])) if 0 < y_pos.sum() < len(y_pos) else None,
        "confusion": confusion_matrix(labels, pred, labels=list(range(meta.num_classes))).tolist(),
    }
    if subclasses is not None:
        subclasses = np.asarray(subclasses, dtype=np.int64)
        names = list(subclass_names) if subclass_names is not None else [str(i) for i in range(subclasses.max() + 1)]
        per = {}
        for s, name in enumerate(names):
            m = subclasses == s
            if m.any():
                per[name] = pct((pred[m] == labels[m]).mean())
        out["per_subclass_accuracy"] = per
        if meta.output == "subclass_logits" and subclass_names is not None and list(meta.subclass_names) == names:
            out["subclass_accuracy"] = pct((logits.argmax(axis=1) == subclasses).mean())
    return out


def mean_soft_subclass_distribution(
    logits: np.ndarray, subclasses: np.ndarray, num_data_subclasses: int, temperature: float = 1.0
) -> np.ndarray:
    """(S_data, S_model) mean softmax(logits/T) of the samples of each true subclass (NaN rows for
    subclasses absent from the split): the "dark knowledge" a subclass teacher hands to SKD."""
    p = softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    out = np.full((num_data_subclasses, p.shape[1]), np.nan)
    for s in range(num_data_subclasses):
        m = subclasses == s
        if m.any():
            out[s] = p[m].mean(axis=0)
    return out


class EvalInputs:
    """The un-augmented, preprocessed inputs of a LabeledSet split (``preprocess_for``), in batches.

    Cached in memory when small enough (validation runs every epoch); otherwise re-read per pass.
    ``indices`` restricts to a shard (DDP evaluation).
    """

    def __init__(self, ls, meta: ModelMeta, *, batch_size: int = 128, indices: np.ndarray | None = None) -> None:
        self.ls = ls
        self.meta = meta
        self.batch_size = int(batch_size)
        self.indices = np.arange(len(ls)) if indices is None else np.asarray(indices, dtype=np.intp)
        per_item = 4 * 3 * meta.input_size[0] * meta.input_size[1]
        self._cache: list[np.ndarray] | None = [] if per_item * len(self.indices) <= CACHE_BYTES else None
        self._complete = False

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.ls.labels[self.indices]

    @property
    def subclasses(self) -> np.ndarray:
        return self.ls.subclasses[self.indices]

    def _make(self, idx: np.ndarray) -> np.ndarray:
        from edgeskd.runtime.preprocess import preprocess_for

        ls = self.ls
        if ls.images is not None:
            return preprocess_for(self.meta, ls.images[idx])
        # files may differ in size: preprocess one by one (same function, same result)
        return np.concatenate([preprocess_for(self.meta, ls.load_image(int(i))) for i in idx])

    def batches(self):
        if self._complete and self._cache is not None:
            yield from self._cache
            return
        cache: list[np.ndarray] = []
        for start in range(0, len(self.indices), self.batch_size):
            x = self._make(self.indices[start:start + self.batch_size])
            if self._cache is not None:
                cache.append(x)
            yield x
        if self._cache is not None:
            self._cache, self._complete = cache, True


def predict_logits(model, inputs: EvalInputs, *, device: str = "cpu", amp_dtype=None) -> np.ndarray:
    """Raw outputs (N, num_outputs) of a torch model over ``inputs``, eval mode, no grad."""
    import torch

    was_training = model.training
    model.eval()
    outs = []
    with torch.no_grad():
        for x in inputs.batches():
            xt = torch.from_numpy(x).to(device, non_blocking=True)
            if amp_dtype is not None:
                with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype):
                    y = model(xt)
            else:
                y = model(xt)
            outs.append(y.float().cpu().numpy())
    model.train(was_training)
    n_out = getattr(inputs.meta, "num_outputs", 0)
    return np.concatenate(outs) if outs else np.zeros((0, n_out), np.float32)


def evaluate_model(model, meta: ModelMeta, ls, *, batch_size: int = 128, device: str = "cpu") -> dict[str, Any]:
    """Metrics of a torch model on a LabeledSet (or one split of it), through ``preprocess_for``."""
    inputs = EvalInputs(ls, meta, batch_size=batch_size)
    logits = predict_logits(model, inputs, device=device)
    return evaluate_logits(logits, meta, ls.labels, ls.subclasses, ls.subclass_names)
