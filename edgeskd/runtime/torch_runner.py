"""Torch eager backend, for comparisons only (parity checks, the bench's baseline).

This is the one module under ``edgeskd.runtime`` that imports torch; nothing in the runtime
imports it, so the edge box never needs torch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgeskd.errors import BackendUnavailable, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.runtime.base import Runner


class TorchRunner(Runner):
    """``TorchRunner(checkpoint_path)`` or ``TorchRunner(model=nn.Module, meta=ModelMeta)``.

    ``threads`` sets torch's intra-op threads while the runner is active (restored afterwards).
    """

    backend = "torch"

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, model: Any = None,
                 meta: ModelMeta | None = None, threads: int | None = None, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the torch backend needs torch; install edgeskd[train]") from None
        if (checkpoint is None) == (model is None):
            raise UsageError("TorchRunner takes a checkpoint path or model= with meta=, not both")
        if checkpoint is not None:
            from edgeskd.models.checkpoint import model_from_checkpoint

            model, meta, _ = model_from_checkpoint(checkpoint)
        if meta is None:
            raise UsageError("TorchRunner(model=...) needs meta=")
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        self.device = torch.device(device)
        if self.device.type == "cuda":   # one line, not torch's driver traceback
            if not torch.cuda.is_available():
                raise BackendUnavailable(f"--device {device}: no CUDA device is visible to torch; use --device cpu")
            if self.device.index is not None and self.device.index >= torch.cuda.device_count():
                raise BackendUnavailable(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s) "
                                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        self.model = model.eval().to(self.device)
        self.threads = threads
        self._saved_threads: int | None = None
        super().__init__(meta)

    def _activate_impl(self) -> None:
        import torch

        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def _deactivate_impl(self) -> None:
        import torch

        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(batch).to(self.device))
        return out.float().cpu().numpy()
