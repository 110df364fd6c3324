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
    views: Any = None                   # (B,) the flip / rotation each item got (0–7, 0 = unchanged)


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


class DistillTask(Task):
    """A student distilled from the frozen teacher's subclass logits (``batch.teacher_logits``) with
    weight ``alpha`` on the distillation term at temperature ``temperature``."""

    uses_teacher = True

    def __init__(self, subclass_to_class: Sequence[int], *, alpha: float, temperature: float) -> None:
        super().__init__()
        self.subclass_to_class = list(subclass_to_class)
        self.alpha, self.temperature = alpha, temperature


class KDTask(DistillTask):
    """Conventional KD: a C-logit student distilled from the teacher's logsumexp class logits."""

    def loss(self, out, batch: Batch) -> dict[str, Any]:
        from edgeskd.distill.losses import kd_loss, subclass_to_class_logits

        teacher_cls = subclass_to_class_logits(batch.teacher_logits, self.subclass_to_class)
        return kd_loss(out, teacher_cls, batch.labels, alpha=self.alpha, temperature=self.temperature)


class SKDTask(DistillTask):
    """Subclass KD: one student logit per teacher subclass, distilled from the teacher's subclass logits."""

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
    """Batch preparation for distilling tasks: the frozen teacher's subclass logits, handed to every
    task as ``batch.teacher_logits`` — one teacher output serves every student trained on the batch.

    Three ways, fastest first:

    * ``table`` (``--teacher-targets clean``, the default): the teacher's logits of every training
      item on its *un-augmented* image, computed in one pass before the students train; a batch
      looks its rows up by ``batch.indices``. One forward per item for the whole run. The classes
      and subclasses do not change under flips, rotations and a small colour jitter, so the clean
      image's distribution is the target of each augmented view (on the synthetic default the
      students scored the same as with per-view targets, within a seed's noise).
    * ``cache=True`` (``--teacher-targets augmented``): the teacher sees what the students see,
      without autograd (``torch.inference_mode``); its logits are kept per item and *view* (the flip
      / 90° rotation, ``batch.views``), so an item seen again in a view it had is not recomputed:
      at most 8 forwards per item (expected 8·(1 − (7/8)^E) over E epochs), one with ``--augment
      none``. The colour jitter is not part of the key.
    * neither: one teacher forward per batch.
    """

    def __init__(self, teacher, autocast: Callable[[], ContextManager] = contextlib.nullcontext, *,
                 cache: bool = False, table=None, setup_s: float = 0.0) -> None:
        self.teacher, self.autocast, self.cache = teacher, autocast, bool(cache)
        self.table = table        # (items, S) logits of the clean training images, or None
        self.setup_s = float(setup_s)   # seconds the table took (shared out over the epochs)
        self._table = None    # (items, 8, S) logits per item and view ...
        self._filled = None   # ... and which of them were computed
        self.forwarded = 0    # images that went through the teacher

    def _forward(self, x):
        import torch

        with torch.inference_mode(), self.autocast():
            logits = self.teacher(x).float()
        self.forwarded += len(x)
        # a normal tensor (inference tensors cannot be saved for a student's backward pass)
        return logits.clone()

    def _reserve(self, items: int, like) -> None:
        """Room for ``items`` items (the table grows as larger indices turn up)."""
        import torch

        from edgeskd.data.torch_dataset import N_VIEWS

        have = 0 if self._table is None else self._table.shape[0]
        if items <= have:
            return
        grow = max(items, 2 * have)
        table = torch.zeros((grow, N_VIEWS, like.shape[-1]), dtype=like.dtype, device=like.device)
        filled = torch.zeros((grow, N_VIEWS), dtype=torch.bool, device=like.device)
        if self._table is not None:
            table[:have], filled[:have] = self._table, self._filled
        self._table, self._filled = table, filled

    def __call__(self, batch: Batch) -> Batch:
        if self.table is not None and batch.indices is not None:
            import torch

            return replace(batch, teacher_logits=self.table[torch.as_tensor(batch.indices, device=self.table.device)])
        if not self.cache or batch.indices is None:
            return replace(batch, teacher_logits=self._forward(batch.x))
        import torch

        idx = torch.as_tensor(batch.indices).long()
        views = torch.zeros_like(idx) if batch.views is None else torch.as_tensor(batch.views).long()
        if self._table is None:   # nothing computed yet (the table's width and device come with the first output)
            missing = torch.arange(len(idx))
        else:
            self._reserve(int(idx.max()) + 1, self._table[0])
            idx, views = idx.to(self._table.device), views.to(self._table.device)
            missing = (~self._filled[idx, views]).nonzero().flatten()
        if len(missing):
            fresh = self._forward(batch.x[missing.to(batch.x.device)])
            self._reserve(int(idx.max()) + 1, fresh)
            idx, views, missing = idx.to(fresh.device), views.to(fresh.device), missing.to(fresh.device)
            self._table[idx[missing], views[missing]] = fresh
            self._filled[idx[missing], views[missing]] = True
        return replace(batch, teacher_logits=self._table[idx, views])
