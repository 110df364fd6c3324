"""Preprocess + infer + probabilities for a batch of decoded frames.

CPU path: ``frames.FramePreprocessor`` (numpy, converts only the pixels the resize reads) and
``runner.infer``. CUDA path: the fused kernel writes each frame straight into the engine's input
buffer and ``runner.infer_device`` runs on it; only runners with ``supports_cuda_preprocess`` (the
TensorRT runner) can take it. 8-bit YUV frames go up as their planes and are converted on the GPU
with the CPU path's coefficients and rounding. Under ``--preprocess auto`` a kernel that cannot be
built or loaded (no NVRTC and no nvcc, a binding problem) falls back to the CPU path with one
warning.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from edgeskd.runtime.postprocess import class_probabilities, subclass_probabilities
from edgeskd.stream.frames import FramePreprocessor
from edgeskd.stream.source import DecodedFrame


class Predictor:
    """``predictor(frames, crop)`` → (N, C) class probabilities (calibrated with the artifact's
    temperature) and (N, S) subclass probabilities (None for class-logit models). ``path`` is "cuda" or "cpu". ``close()`` frees the CUDA preprocessor's
    buffers (before the runner is deactivated)."""

    def __init__(self, runner: Any, mode: str, warn: Callable[[str], None] | None = None) -> None:
        self.runner = runner
        self.meta = runner.metadata
        self.cpu = FramePreprocessor(self.meta)
        from edgeskd.runtime.cuda_preprocess import preprocessor_for_stream

        # None = the CPU path: --preprocess cpu, a CPU runner under auto, or (auto, with one warning)
        # a GPU runner whose kernel cannot be built or loaded
        self.cuda: Any = preprocessor_for_stream(runner, mode, warn)
        self.path = "cuda" if self.cuda is not None else "cpu"

    def logits(self, items: Sequence[DecodedFrame], crop: tuple[int, int, int, int] | None) -> np.ndarray:
        if self.cuda is not None:
            for i, it in enumerate(items):
                # the decoder's YUV planes, converted on the GPU with the CPU path's maths
                self.cuda.run_frame_into_runner(it.frame, crop, i, rgb=it.rgb)
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
