"""Evaluation of torch models during training, on the runtime's evaluation loop and metrics.

Inputs come from ``edgeskd.runtime.evaluate.EvalInputs`` (the inference preprocessing, un-augmented)
and metrics from ``edgeskd.runtime.evaluate.evaluate_logits`` (``edgeskd.metrics``), the same code
the benchmark runs on exported artifacts.
Training records its results (log.jsonl, checkpoints, metrics.json) in percent, so the metrics
returned here are presented with ``as_percent``.

* ``evaluate_logits(logits, meta, labels, subclasses, subclass_names)`` — raw model output → metrics (%)
* ``evaluate_model(model, meta, dataset)`` — torch model on a LabeledSet split → metrics (%)
* ``predict_logits(model, inputs)`` — a torch model's raw outputs over ``EvalInputs``
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeskd.meta import ModelMeta
from edgeskd.metrics import as_percent
from edgeskd.runtime import evaluate as runtime_evaluate
from edgeskd.runtime.evaluate import EvalInputs
from edgeskd.runtime.postprocess import softmax

__all__ = ["EvalInputs", "evaluate_logits", "evaluate_model", "mean_soft_subclass_distribution", "predict_logits"]


def evaluate_logits(
    logits: np.ndarray,
    meta: ModelMeta,
    labels: np.ndarray,
    subclasses: np.ndarray | None = None,
    subclass_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``edgeskd.runtime.evaluate.evaluate_logits`` in percent: ``f1``/``precision``/``recall`` of
    ``meta.positive_class``, ``accuracy``, ``auc`` (None with one class only),
    ``per_subclass_accuracy``, ``confusion`` (counts) and, for a model that predicts the data's own
    subclasses, ``subclass_accuracy``."""
    return as_percent(runtime_evaluate.evaluate_logits(logits, meta, labels, subclasses, subclass_names))


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


def evaluate_model(model, meta: ModelMeta, dataset, *, batch_size: int = 128, device: str = "cpu") -> dict[str, Any]:
    """Metrics (percent) of a torch model on a LabeledSet (or one split of it)."""
    logits = predict_logits(model, EvalInputs(dataset, meta, batch_size=batch_size), device=device)
    return evaluate_logits(logits, meta, dataset.labels, dataset.subclasses, dataset.subclass_names)
