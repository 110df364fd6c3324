"""Distillation losses as pure functions: torch only; no state, no modules.

Conventions, used everywhere in edgeskd:

* subclass logits ``(B, S)`` form contiguous blocks per class; ``subclass_to_class`` (length S,
  non-decreasing) says which class owns each subclass. Blocks may differ in size.
* the class logit of class c is ``logsumexp`` of its block, so ``softmax(class_logits)`` equals the
  sum of the subclass probabilities within each block;
* ``alpha`` weights the distillation term; every reduction is a batch mean; the soft term keeps T².
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _index(subclass_to_class: Sequence[int] | Tensor, device: torch.device) -> Tensor:
    idx = torch.as_tensor(subclass_to_class, dtype=torch.long, device=device)
    if idx.ndim != 1 or idx.numel() == 0:
        raise ValueError("subclass_to_class must be a non-empty 1-D index")
    if bool((idx[1:] < idx[:-1]).any()):
        raise ValueError("subclass_to_class must be non-decreasing (contiguous class blocks)")
    return idx


def subclass_to_class_logits(sub_logits: Tensor, subclass_to_class: Sequence[int] | Tensor) -> Tensor:
    """(B, S) subclass logits → (B, C) class logits: logsumexp over each class's block.

    Works for blocks of unequal size; differentiable; numerically stable (per-block max shift).
    """
    if sub_logits.ndim != 2:
        raise ValueError(f"expected (B, S) logits, got shape {tuple(sub_logits.shape)}")
    idx = _index(subclass_to_class, sub_logits.device)
    if idx.numel() != sub_logits.shape[1]:
        raise ValueError(f"subclass_to_class has {idx.numel()} entries for {sub_logits.shape[1]} logits")
    num_classes = int(idx[-1]) + 1
    # Contiguous blocks → split sizes; one logsumexp per block.
    sizes = torch.bincount(idx, minlength=num_classes).tolist()
    if min(sizes) == 0:
        raise ValueError("every class needs at least one subclass")
    blocks = torch.split(sub_logits, sizes, dim=1)
    return torch.stack([torch.logsumexp(b, dim=1) for b in blocks], dim=1)


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Batch-mean CE(softmax(teacher/T), student/T) = −Σ p_t log p_s, *without* the T² factor."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return -(p_t * log_p_s).sum(dim=1).mean()


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")


def skd_loss(
    student_sub: Tensor,
    teacher_sub: Tensor,
    labels: Tensor,
    subclass_to_class: Sequence[int] | Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> dict[str, Tensor]:
    """Subclass KD: α·T²·CE(softmax(t_sub/T), s_sub/T) + (1−α)·CE(y_class, LSE-class(s_sub)).

    Returns ``{"loss", "kd", "ce"}`` (kd already multiplied by T², before α).
    """
    _check_alpha(alpha)
    kd = soft_cross_entropy(student_sub, teacher_sub, temperature) * temperature**2
    ce = F.cross_entropy(subclass_to_class_logits(student_sub.float(), subclass_to_class), labels)
    return {"loss": alpha * kd + (1.0 - alpha) * ce, "kd": kd.detach(), "ce": ce.detach()}


def kd_loss(
    student_cls: Tensor,
    teacher_cls: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> dict[str, Tensor]:
    """Conventional KD (Hinton): α·T²·CE(softmax(t_cls/T), s_cls/T) + (1−α)·CE(y, s_cls).

    For a subclass teacher, pass ``teacher_cls = subclass_to_class_logits(teacher_sub, idx)``.
    """
    _check_alpha(alpha)
    kd = soft_cross_entropy(student_cls, teacher_cls, temperature) * temperature**2
    ce = F.cross_entropy(student_cls.float(), labels)
    return {"loss": alpha * kd + (1.0 - alpha) * ce, "kd": kd.detach(), "ce": ce.detach()}


def ce_loss(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Plain cross-entropy (class labels for the plain student, subclass labels for a known-subclass
    teacher)."""
    ce = F.cross_entropy(logits.float(), targets)
    return {"loss": ce, "ce": ce.detach()}


def subclass_aux_loss(sub_logits: Tensor, temperature: float = 1.0, eps: float = 1e-5) -> Tensor:
    """Müller–Kornblith–Hinton (2020) auxiliary loss that spreads invented subclasses apart.

    Each sample's S logits are normalised to zero mean / unit variance, scaled by 1/sqrt(T·S), and
    the B×B Gram matrix G is formed; the loss is ``mean_i logsumexp_j G_ij − 1/T − log B``. The
    diagonal is 1/T by construction, so this is the batch-mean InfoNCE of each sample against the
    others (itself as the positive). The −log B shift makes a batch of identical logit vectors score
    exactly 0; spreading the vectors apart makes it negative (mutually orthogonal vectors score
    log((e^{1/T} + B − 1)/B) − 1/T).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if sub_logits.ndim != 2:
        raise ValueError(f"expected (B, S) logits, got shape {tuple(sub_logits.shape)}")
    B, S = sub_logits.shape
    x = sub_logits.float()
    z = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, unbiased=False, keepdim=True) + eps)
    z = z / math.sqrt(temperature * S)
    gram = z @ z.t()
    return torch.logsumexp(gram, dim=1).mean() - 1.0 / temperature - math.log(B)


def invented_teacher_loss(
    sub_logits: Tensor,
    labels: Tensor,
    subclass_to_class: Sequence[int] | Tensor,
    *,
    beta: float = 1.0,
    aux_temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Teacher with K invented subclasses per class: CE on the LSE class logits + β·L_aux."""
    ce = F.cross_entropy(subclass_to_class_logits(sub_logits.float(), subclass_to_class), labels)
    aux = subclass_aux_loss(sub_logits, aux_temperature)
    return {"loss": ce + beta * aux, "ce": ce.detach(), "aux": aux.detach()}
