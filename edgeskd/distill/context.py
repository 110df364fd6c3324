"""What every model of one training run shares: settings, processes, device, splits, evaluation."""

from __future__ import annotations

import contextlib
import json
import random
import zlib
from pathlib import Path
from typing import ContextManager

import numpy as np

from edgeskd.distill import ddp
from edgeskd.distill.config import TrainConfig
from edgeskd.distill.evaluate import EvalInputs, evaluate_logits, predict_logits
from edgeskd.meta import ModelMeta


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_seed(seed: int, name: str) -> int:
    """A per-(run seed, model name) seed: initial weights and data order of that model."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


class RunContext:
    """The config, the process group, the device and mixed-precision choice, the splits, the
    evaluation inputs (preprocessed once) and the run's log file."""

    def __init__(self, cfg: TrainConfig, dist: ddp.DistContext, dataset, out: Path, tracker=None) -> None:
        import torch

        self.cfg, self.dist, self.dataset, self.out = cfg, dist, dataset, out
        self.tracker = tracker   # distill.tracking.Tracker (TensorBoard / MLflow), or None
        self.device = dist.device
        use_amp = cfg.amp if cfg.amp is not None else self.device.startswith("cuda")
        if use_amp:
            self.amp_dtype = torch.float16 if self.device.startswith("cuda") else torch.bfloat16
        else:
            self.amp_dtype = None
        # decoded once (a small set's images are read every epoch)
        self.train_split = dataset.split("train").in_memory()
        self.val_split = dataset.split("val")
        self.test_split = dataset.split("test")
        self._inputs: dict[tuple, EvalInputs] = {}

    def autocast(self) -> ContextManager:
        """Mixed precision for forward passes (a no-op without AMP)."""
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.amp_dtype)

    def _split(self, name: str):
        return {"train": self.train_split, "val": self.val_split, "test": self.test_split}[name]

    def inputs(self, split: str, meta: ModelMeta) -> EvalInputs:
        """This rank's shard of a split, preprocessed once per (split, input size, mean, std)."""
        key = (split, tuple(meta.input_size), tuple(meta.mean), tuple(meta.std), meta.channel_order)
        if key not in self._inputs:
            part = self._split(split)
            self._inputs[key] = EvalInputs(part, meta, batch_size=max(self.cfg.batch_size, 64),
                                           indices=ddp.shard_indices(len(part), self.dist))
        return self._inputs[key]

    def predict(self, model, split: str, meta: ModelMeta) -> np.ndarray:
        """Logits of the whole split (gathered over ranks, in order), un-augmented. The training
        split's inputs are not kept (one pass: the teacher's clean targets)."""
        if split == "train":
            part = self.train_split
            inp = EvalInputs(part, meta, batch_size=max(self.cfg.batch_size, 64),
                             indices=ddp.shard_indices(len(part), self.dist), cache_bytes=0)
        else:
            inp = self.inputs(split, meta)
        rows = predict_logits(model, inp, device=self.device, amp_dtype=self.amp_dtype)
        return ddp.gather_rows(self.dist, rows, len(inp.ls))

    def evaluate(self, model, split: str, meta: ModelMeta) -> tuple[dict, np.ndarray]:
        logits = self.predict(model, split, meta)
        part = self._split(split)
        return evaluate_logits(logits, meta, part.labels, part.subclasses, part.subclass_names), logits

    def log(self, record: dict) -> None:
        """One line of OUT/log.jsonl (rank 0 only)."""
        if self.dist.is_main:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.tracker is not None:
                self.tracker.epoch(record)
