"""What each trained model predicts: the teacher's and the students' ``ModelMeta``.

The teacher emits one logit per subclass (the data's known subclasses, or K invented ones per
class); the SKD student copies the teacher's subclass layout; the plain and KD students emit one
logit per class.
"""

from __future__ import annotations

from edgeskd.distill.config import TrainConfig
from edgeskd.distill.data import positive_class
from edgeskd.errors import ArtifactError, DataError, UsageError
from edgeskd.meta import ModelMeta


def invented_layout(class_names: list[str], k: int) -> tuple[list[str], list[int]]:
    names = [f"{c}/inv{j}" for c in class_names for j in range(k)]
    return names, [ci for ci in range(len(class_names)) for _ in range(k)]


def teacher_meta(dataset, cfg: TrainConfig) -> ModelMeta:
    k = cfg.invent_k
    if k is None:
        names, idx = list(dataset.subclass_names), list(dataset.subclass_to_class)
    else:
        names, idx = invented_layout(list(dataset.class_names), k)
    return ModelMeta(class_names=list(dataset.class_names), subclass_names=names, subclass_to_class=idx,
                     input_size=(cfg.img_size, cfg.img_size), output="subclass_logits", arch=cfg.teacher,
                     model_name="teacher", positive_class=positive_class(dataset),
                     background_class=getattr(dataset, "background_class", None),
                     extra={"subclasses": cfg.subclasses})


def student_meta(mode: str, tmeta: ModelMeta, dataset, cfg: TrainConfig) -> ModelMeta:
    if mode == "skd":  # one logit per teacher subclass (known or invented)
        names, idx, output = list(tmeta.subclass_names), list(tmeta.subclass_to_class), "subclass_logits"
    else:
        names, idx, output = list(dataset.subclass_names), list(dataset.subclass_to_class), "class_logits"
    return ModelMeta(class_names=list(dataset.class_names), subclass_names=names, subclass_to_class=idx,
                     input_size=tmeta.input_size, output=output, mean=tmeta.mean, std=tmeta.std,
                     arch=cfg.student, model_name=f"student-{mode}", positive_class=tmeta.positive_class,
                     background_class=tmeta.background_class, extra={"subclasses": cfg.subclasses, "distillation": mode})


def check_teacher_matches(tmeta: ModelMeta, dataset, cfg: TrainConfig, path: str) -> None:
    """A reused teacher must predict this data's classes/subclasses at this input size."""
    if tmeta.output != "subclass_logits":
        raise ArtifactError(f"--teacher-checkpoint {path} is a {tmeta.output} model ({tmeta.model_name}); "
                            "give a teacher.pt (subclass logits)")
    if tmeta.background_class != getattr(dataset, "background_class", None):
        raise DataError(f"--teacher-checkpoint {path} has background class {tmeta.background_class}, the data has "
                        f"{getattr(dataset, 'background_class', None)}; train a new teacher on this data")
    if list(tmeta.class_names) != list(dataset.class_names):
        raise DataError(f"--teacher-checkpoint {path} was trained on classes {tmeta.class_names}, the data has "
                        f"{list(dataset.class_names)}; train a new teacher on this data")
    want = teacher_meta(dataset, cfg)
    if (list(tmeta.subclass_names), list(tmeta.subclass_to_class)) != (want.subclass_names, want.subclass_to_class):
        raise DataError(f"--teacher-checkpoint {path} has subclasses {tmeta.subclass_names}, this run needs "
                        f"{want.subclass_names} (--subclasses {cfg.subclasses}); use the matching --subclasses "
                        "or train a new teacher")
    if tuple(tmeta.input_size) != (cfg.img_size, cfg.img_size):
        raise UsageError(f"--teacher-checkpoint {path} was trained at {tmeta.input_size[1]}x{tmeta.input_size[0]}, "
                         f"--img-size is {cfg.img_size}; pass --img-size {tmeta.input_size[0]}")
