"""Training objectives as task objects: ``parts = task(batch)``.

A task runs its model's forward pass on a ``Batch`` and returns a dict with ``loss`` (the scalar to
back-propagate) and its parts (detached scalars, e.g. ``ce`` and ``kd``), so logs and tests see
every term. The training loop only calls tasks; what a task computes — plain cross-entropy, KD,
SKD, the invented-subclass teacher — lives here, on top of the pure functions in ``losses``.

A distilling task reads the teacher's subclass logits from ``batch.teacher_logits``;
``TeacherOutputs`` fills them in once per batch, so one teacher forward serves every student
trained on that batch.
"""

from __future__ import annotations

import abc

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable, ContextManager, Sequence

from edgeskd.distill.config import TrainConfig
from edgeskd.errors import UsageError
from edgeskd.meta import ModelMeta

Forward = Callable[[Any], Any]


@dataclass(frozen=True)
class Batch:
    x: Any                              # (B, 3, H, W) float inputs
    labels: Any                         # (B,) class indices
    subclasses: Any                     # (B,) data subclass indices
    indices: Any = None                 # (B,) the items' indices in the training split
    teacher_logits: Any = None          # (B, S) the frozen teacher's subclass logits, when a task needs them


class Task(abc.ABC):
    """One model's objective. ``bind(forward)`` gives it the forward pass to call (the training
    loop binds the model, wrapped for DDP and mixed precision); ``task(batch)`` returns the parts."""

    uses_teacher = False

    def __init__(self) -> None:
        self.forward: Forward | None = None

    def bind(self, forward: Forward) -> "Task":
        self.forward = forward
        return self

    def __call__(self, batch: Batch) -> dict[str, Any]:
        if self.forward is None:
            raise RuntimeError(f"{type(self).__name__} has no model: call bind(forward) first")
        if self.uses_teacher and batch.teacher_logits is None:
            raise RuntimeError(f"{type(self).__name__} needs batch.teacher_logits (see TeacherOutputs)")
        return self.loss(self.forward(batch.x).float(), batch)

    @abc.abstractmethod
    def loss(self, out, batch: Batch) -> dict[str, Any]:
        """The objective's parts (``loss`` and its terms) from the model output ``out``."""


class CrossEntropyTask(Task):
    """Plain cross-entropy on the class labels (plain student) or the subclass labels (teacher)."""

    def __init__(self, target: str = "class") -> None:
        super().__init__()
        if target not in ("class", "subclass"):
            raise ValueError(f"target must be 'class' or 'subclass', got {target!r}")
        self.target = target

    def loss(self, out, batch: Batch) -> dict[str, Any]:
        from edgeskd.distill.losses import ce_loss

        return ce_loss(out, batch.labels if self.target == "class" else batch.subclasses)


class InventedSubclassTask(Task):
    """Teacher with K invented subclasses per class: CE on the logsumexp class logits + β·L_aux."""

    def __init__(self, subclass_to_class: Sequence[int], *, beta: float, aux_temperature: float) -> None:
        super().__init__()
        self.subclass_to_class = list(subclass_to_class)
        self.beta, self.aux_temperature = beta, aux_temperature

    def loss(self, out, batch: Batch) -> dict[str, Any]:
        from edgeskd.distill.losses import invented_teacher_loss

        return invented_teacher_loss(out, batch.labels, self.subclass_to_class, beta=self.beta,
                                     aux_temperature=self.aux_temperature)


class KDTask(Task):
    """Conventional KD: a C-logit student distilled from the teacher's logsumexp class logits."""

    uses_teacher = True

    def __init__(self, subclass_to_class: Sequence[int], *, alpha: float, temperature: float) -> None:
        super().__init__()
        self.subclass_to_class = list(subclass_to_class)
        self.alpha, self.temperature = alpha, temperature

    def loss(self, out, batch: Batch) -> dict[str, Any]:
        from edgeskd.distill.losses import kd_loss, subclass_to_class_logits

        teacher_cls = subclass_to_class_logits(batch.teacher_logits, self.subclass_to_class)
        return kd_loss(out, teacher_cls, batch.labels, alpha=self.alpha, temperature=self.temperature)


class SKDTask(Task):
    """Subclass KD: one student logit per teacher subclass, distilled from the teacher's subclass logits."""

    uses_teacher = True

    def __init__(self, subclass_to_class: Sequence[int], *, alpha: float, temperature: float) -> None:
        super().__init__()
        self.subclass_to_class = list(subclass_to_class)
        self.alpha, self.temperature = alpha, temperature

    def loss(self, out, batch: Batch) -> dict[str, Any]:
        from edgeskd.distill.losses import skd_loss

        return skd_loss(out, batch.teacher_logits, batch.labels, self.subclass_to_class, alpha=self.alpha,
                        temperature=self.temperature)


def make_task(kind: str, cfg: TrainConfig, tmeta: ModelMeta) -> Task:
    """The task of a teacher (``kind="teacher"``) or a student mode (none | kd | skd)."""
    idx = list(tmeta.subclass_to_class)
    if kind == "teacher":
        if cfg.invent_k is None:
            return CrossEntropyTask("subclass")
        return InventedSubclassTask(idx, beta=cfg.beta, aux_temperature=cfg.aux_temperature)
    if kind == "none":
        return CrossEntropyTask("class")
    if kind == "kd":
        return KDTask(idx, alpha=cfg.alpha, temperature=cfg.temperature_for("kd"))
    if kind == "skd":
        return SKDTask(idx, alpha=cfg.alpha, temperature=cfg.temperature_for("skd"))
    raise UsageError(f"unknown student mode {kind!r}")


class TeacherOutputs:
    """Batch preparation for distilling tasks: the frozen teacher's subclass logits, computed once
    per batch without autograd (``torch.inference_mode``) and handed to every task as
    ``batch.teacher_logits``.

    ``cache=True`` is for inputs that are the same every epoch (no augmentation): each item's
    logits are computed the first time it is seen and reused after, keyed by ``batch.indices``.
    """

    def __init__(self, teacher, autocast: Callable[[], ContextManager] = contextlib.nullcontext, *,
                 cache: bool = False) -> None:
        self.teacher, self.autocast = teacher, autocast
        self._cache: dict[int, Any] | None = {} if cache else None
        self.forwarded = 0   # images that went through the teacher

    def _forward(self, x):
        import torch

        with torch.inference_mode(), self.autocast():
            logits = self.teacher(x).float()
        self.forwarded += len(x)
        # a normal tensor (inference tensors cannot be saved for a student's backward pass)
        return logits.clone()

    def __call__(self, batch: Batch) -> Batch:
        if self._cache is None or batch.indices is None:
            return replace(batch, teacher_logits=self._forward(batch.x))
        import torch

        keys = [int(i) for i in batch.indices]
        missing = [j for j, k in enumerate(keys) if k not in self._cache]
        if missing:
            fresh = self._forward(batch.x[missing])
            for row, j in enumerate(missing):
                self._cache[keys[j]] = fresh[row]
        return replace(batch, teacher_logits=torch.stack([self._cache[k] for k in keys]))
