"""Before a training run writes anything: each model's weights found (or fetched) and the student
checked for INT8 / TensorRT friendliness.

A missing weight file (``--pretrained imagenet`` on an offline machine with an empty cache, a
mistyped path) fails here with its one-line error — which names the file and the folder to put it
in — before the data is loaded or OUT is created. Under DDP rank 0 looks (one download, not one per
process) and every rank gets its warnings or raises its error.
"""

from __future__ import annotations

from edgeskd.distill import ddp
from edgeskd.distill.config import TrainConfig
from edgeskd.errors import EdgeSKDError


def _check(cfg: TrainConfig) -> list[str]:
    from edgeskd.meta import IMAGENET_MEAN, IMAGENET_STD
    from edgeskd.models.weights import is_imagenet, weight_file
    from edgeskd.models.zoo import int8_warning

    warnings: list[str] = []
    models = [] if cfg.teacher_checkpoint else [("teacher", cfg.teacher, cfg.pretrained)]
    if cfg.students:
        models.append(("student", cfg.student, cfg.student_pretrained))
        w = int8_warning(cfg.student)
        if w:
            warnings.append(w)
    for role, name, pretrained in models:
        weight_file(name, pretrained)
        if is_imagenet(pretrained) and name.startswith("timm:"):
            from edgeskd.models.timm_models import timm_input_stats

            mean, std = timm_input_stats(name)
            if (mean, std) != (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)):
                warnings.append(f"{role} {name}'s ImageNet weights expect mean {mean} std {std}; this run "
                                f"normalises with ImageNet's {tuple(IMAGENET_MEAN)} {tuple(IMAGENET_STD)}")
    return warnings


def check_models(cfg: TrainConfig, dist: ddp.DistContext) -> list[str]:
    """Warnings to print (the student's INT8 concerns, …); the one-line error of a missing weight
    file or an unfit student, raised on every rank."""
    result: list[str] | EdgeSKDError = []
    if dist.is_main:
        try:
            result = _check(cfg)
        except EdgeSKDError as e:
            result = e
    result = ddp.broadcast_object(dist, result)
    if isinstance(result, EdgeSKDError):
        raise result from None
    return result
