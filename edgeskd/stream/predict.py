"""Preprocess + infer + probabilities for a batch of decoded frames.

CPU path: ``frames.FramePreprocessor`` (numpy, converts only the pixels the resize reads) and
``runner.infer``. CUDA path: the fused kernel writes each frame straight into the engine's input
buffer and ``runner.infer_device`` runs on it; only runners with ``supports_cuda_preprocess`` (the
TensorRT runner) can take it. 8-bit YUV frames go up as their planes and are converted on the GPU
with the CPU path's coefficients and rounding. Under ``--preprocess auto`` a kernel that cannot be
built or loaded (no NVRTC and no nvcc, a binding problem) falls back to the CPU path with one
warning.

``submit(frames, crop)`` is the same work split at the runner: it preprocesses and hands the batch
to ``runner.infer_async`` (a future of the logits; a remote runner returns while the request is in
flight), and ``probabilities(logits)`` finishes it. ``predictor(frames, crop)`` does both at once.
"""

from __future__ import annotations

from concurrent.futures import Future
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

    def submit(self, items: Sequence[DecodedFrame], crop: tuple[int, int, int, int] | None) -> Future:
        """Preprocess and send: a future of the batch's logits (``runner.infer_async`` where requests in
        flight pay, else ``infer``, done at once, as on the CUDA path)."""
        if self.depth == 1:   # local runners and the CUDA path: inference now, in this thread
            fut: Future = Future()
            fut.set_result(self.logits(items, crop))
            return fut
        return self.runner.infer_async(self.cpu([it.frame for it in items], crop, [it.rgb for it in items]))

    @property
    def depth(self) -> int:
        """Batches worth keeping in flight: the runner's ``pipeline_depth`` (1 on the CUDA path)."""
        return 1 if self.cuda is not None else max(1, int(getattr(self.runner, "pipeline_depth", 1)))

    def probabilities(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, K) logits → (class probabilities, subclass probabilities or None)."""
        return class_probabilities(logits, self.meta), subclass_probabilities(logits, self.meta)

    def __call__(self, items: Sequence[DecodedFrame],
                 crop: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
        return self.probabilities(self.logits(items, crop))

    def close(self) -> None:
        if self.cuda is not None:
            self.cuda.close()
            self.cuda = None
