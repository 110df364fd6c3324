"""The Runner protocol: one interface over every backend (Polygraphy-style).

Lifecycle: a backend's loader reads the artifact and its metadata when the runner is constructed
(``metadata`` and ``input_shape`` are readable from then on); ``activate`` creates what inference
needs (an ONNX Runtime session, a TensorRT execution context and device buffers) and
``deactivate`` frees it. A runner is a context manager over that pair; ``infer`` activates a
runner that is not active yet. ``infer(batch)`` checks the input once here and then calls the
backend's ``_infer_impl``. Backends import their libraries lazily so the package imports anywhere.
For tests, ``edgeskd.runtime.fake.FakeRunner`` computes its output with a given function.

``infer_async(batch)`` returns a ``concurrent.futures.Future`` of the logits. Here (every local
backend) it runs ``infer`` at once and returns a completed future; a runner whose inference happens
elsewhere (``serve.remote.RemoteRunner``) sends the request from a thread of its own and returns
while it is in flight.
``pipeline_depth`` says how many requests a caller may keep in flight with profit: 1 for local
runners (the stream then keeps its single-thread loop), more for a remote one.
"""

from __future__ import annotations

import abc
from concurrent.futures import Future
from typing import Any

import numpy as np

from edgeskd.errors import UsageError
from edgeskd.meta import ModelMeta


class Runner(abc.ABC):
    backend: str = "?"
    # True where a CUDA preprocessor can write the input in place: the runner then has
    # ``input_buffer``, ``stream``, ``cu`` and ``infer_device(n)`` (the TensorRT runner)
    supports_cuda_preprocess: bool = False
    # requests worth keeping in flight through ``infer_async`` (1: inference runs in the caller's thread)
    pipeline_depth: int = 1
    # CPU seconds the runner's own threads spent on ``infer_async`` requests (0: the caller's thread ran them)
    async_cpu_s: float = 0.0

    def __init__(self, meta: ModelMeta, *, max_batch: int | None = None) -> None:
        self.meta = meta
        self.max_batch = max_batch
        self._active = False

    # -- protocol ---------------------------------------------------------------
    @property
    def metadata(self) -> ModelMeta:
        return self.meta

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(N, 3, H, W); N is -1 for a dynamic batch."""
        h, w = self.meta.input_size
        return (-1, 3, h, w)

    @property
    def precision(self) -> str:
        return self.meta.precision

    @property
    def active(self) -> bool:
        return self._active

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self._active:
            self._activate_impl()
            self._active = True

    def deactivate(self) -> None:
        if self._active:
            self._deactivate_impl()
            self._active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) preprocessed batch → (N, K) logits (K per ``meta.output``)."""
        batch = self._ready(batch)
        out = self._infer_impl(batch)
        return np.asarray(out, dtype=np.float32)

    def infer_async(self, batch: np.ndarray) -> Future:
        """``infer`` as a future of the (N, K) float32 logits. Bad input raises here, as in ``infer``;
        this default runs ``infer`` now (its errors raise here too) and returns a completed future.
        A runner with ``pipeline_depth`` > 1 overrides it: the request's own failure is then the
        future's exception."""
        fut: Future = Future()
        fut.set_result(self.infer(batch))
        return fut

    def _ready(self, batch: np.ndarray) -> np.ndarray:
        """Activate if needed and check ``batch``: what every inference entry point does first."""
        if not self._active:
            self.activate()
        return self.check_input(batch)

    # -- input checks in one place ----------------------------------------------------
    def check_input(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise UsageError(f"infer() takes a numpy array, got {type(batch).__name__}")
        _, c, h, w = self.input_shape
        if batch.ndim != 4:
            raise UsageError(
                f"input has rank {batch.ndim} (shape {batch.shape}); expected (N, {c}, {h}, {w}) — "
                "add a batch axis or run edgeskd.runtime.preprocess first"
            )
        if batch.shape[1:] != (c, h, w):
            raise UsageError(f"input shape {batch.shape} does not match the model's (N, {c}, {h}, {w})")
        if batch.shape[0] < 1:
            raise UsageError("input batch is empty")
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            raise UsageError(f"batch {batch.shape[0]} exceeds this artifact's max batch {self.max_batch}")
        if batch.dtype != np.float32:
            if not np.issubdtype(batch.dtype, np.floating):
                raise UsageError(f"input dtype {batch.dtype} must be float32 (preprocess uint8 frames first)")
            batch = batch.astype(np.float32)
        return np.ascontiguousarray(batch)

    # -- backend hooks -------------------------------------------------------------------
    def _activate_impl(self) -> None:  # noqa: B027 - optional hook
        pass

    def _deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        pass

    @abc.abstractmethod
    def _infer_impl(self, batch: np.ndarray) -> np.ndarray: ...
