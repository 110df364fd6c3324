"""Preprocess + infer + probabilities for a batch of decoded frames.

CPU path: ``frames.FramePreprocessor`` (numpy, converts only the pixels the resize reads) and
``runner.infer``. CUDA path: the fused kernel writes each frame straight into the engine's input
buffer and ``runner.infer_device`` runs on it; only runners with ``supports_cuda_preprocess`` (the
TensorRT runner) can take it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeskd.errors import BackendUnavailable
from edgeskd.runtime.postprocess import class_probabilities, subclass_probabilities
from edgeskd.stream.frames import FramePreprocessor
from edgeskd.stream.source import DecodedFrame


class Predictor:
    """``predictor(frames, crop)`` → (N, C) class and (N, S) subclass probabilities (None for
    class-logit models). ``path`` is "cuda" or "cpu". ``close()`` frees the CUDA preprocessor's
    buffers (before the runner is deactivated)."""

    def __init__(self, runner: Any, mode: str) -> None:
        self.runner = runner
        self.meta = runner.metadata
        self.cpu = FramePreprocessor(self.meta)
        self.cuda: Any = None
        capable = bool(runner.supports_cuda_preprocess)
        if mode == "cuda" and not capable:
            raise BackendUnavailable(
                f"--preprocess cuda needs a GPU runner (a TensorRT .engine); {runner.backend} runs on the CPU — "
                "use --preprocess cpu"
            )
        if capable and mode in ("auto", "cuda"):
            from edgeskd.runtime.cuda_preprocess import CudaPreprocessor

            self.cuda = CudaPreprocessor.for_runner(runner)
        self.path = "cuda" if self.cuda is not None else "cpu"

    def logits(self, items: Sequence[DecodedFrame], crop: tuple[int, int, int, int] | None) -> np.ndarray:
        if self.cuda is not None:
            for i, it in enumerate(items):
                rgb = it.rgb if it.rgb is not None else it.frame.to_ndarray(format="rgb24")
                self.cuda.run_into_runner(rgb, crop, i)
            return self.runner.infer_device(len(items))
        x = self.cpu([it.frame for it in items], crop, [it.rgb for it in items])
        return self.runner.infer(x)

    def __call__(self, items: Sequence[DecodedFrame],
                 crop: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
        logits = self.logits(items, crop)
        return class_probabilities(logits, self.meta), subclass_probabilities(logits, self.meta)

    def close(self) -> None:
        if self.cuda is not None:
            self.cuda.close()
            self.cuda = None
