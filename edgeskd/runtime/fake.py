"""``FakeRunner``: a Runner whose output is a function of the input batch, for tests (and dry runs)
that need a runner without a model file: a slow one, one that fails on the N-th call, or one that
wraps a real runner's ``infer``. It goes through the same input checks and lifecycle as every
backend and counts what happened to it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeskd.meta import ModelMeta
from edgeskd.runtime.base import Runner


def zero_logits(meta: ModelMeta) -> Callable[[np.ndarray], np.ndarray]:
    """The default output: (N, num_outputs) zeros (equal class probabilities)."""
    return lambda batch: np.zeros((batch.shape[0], meta.num_outputs), np.float32)


class FakeRunner(Runner):
    """``FakeRunner(meta, fn)``: ``infer(batch)`` returns ``fn(batch)`` (zeros by default).

    ``calls``: how many batches were inferred; ``activations`` / ``deactivations``: lifecycle counts.
    """

    backend = "fake"

    def __init__(self, meta: ModelMeta, fn: Callable[[np.ndarray], np.ndarray] | None = None, *,
                 max_batch: int | None = None, inner: Runner | None = None) -> None:
        super().__init__(meta, max_batch=max_batch)
        self.fn = fn if fn is not None else zero_logits(meta)
        self.inner = inner          # a runner activated and deactivated with this one
        self.calls = 0
        self.activations = 0
        self.deactivations = 0

    @classmethod
    def wrapping(cls, runner: Runner, fn: Callable[[Runner, np.ndarray], np.ndarray]) -> "FakeRunner":
        """A fake with ``runner``'s metadata and batch limit whose output is ``fn(runner, batch)``;
        activating the fake activates ``runner``."""
        return cls(runner.metadata, lambda batch: fn(runner, batch), max_batch=runner.max_batch, inner=runner)

    def _activate_impl(self) -> None:
        self.activations += 1
        if self.inner is not None:
            self.inner.activate()

    def _deactivate_impl(self) -> None:
        self.deactivations += 1
        if self.inner is not None:
            self.inner.deactivate()

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.fn(batch)
