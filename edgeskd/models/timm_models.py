"""timm models by name: ``timm:ARCH`` or ``timm:ARCH.TAG`` (any architecture ``timm.list_models()``
names; the tag picks ImageNet weights, e.g. ``timm:resnet50.a1_in1k``).

Built with ``num_classes=num_outputs`` (timm swaps in a head of that size; with ImageNet weights
timm drops the 1000-class head and keeps the backbone) and ``exportable=True`` (timm's layer mode
with ONNX-traceable activations). timm is imported only when a ``timm:`` name is used.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from edgeskd.errors import ArtifactError, BackendUnavailable, UnknownModelError
from edgeskd.models.weights import is_imagenet, load_backbone_weights, timm_weight_file

TIMM_PREFIX = "timm:"
# Named in the unknown-name error; README's model table measures these and more.
EXAMPLES = ("timm:resnet50", "timm:efficientnet_b0", "timm:mobilenetv3_small_100", "timm:mobilenetv4_conv_small",
            "timm:fastvit_t8")


def is_timm_name(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def timm_arch(name: str) -> str:
    """``timm:resnet50.a1_in1k`` → ``resnet50.a1_in1k``."""
    return name[len(TIMM_PREFIX):].strip() if is_timm_name(name) else name


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise BackendUnavailable("timm:NAME models need timm; install the train extra: "
                                 "pip install 'edgeskd[train]'") from None
    return timm


def check_timm_name(name: str, builtin: list[str], role: str | None = None, role_names: list[str] = ()) -> None:
    """Raise UnknownModelError unless ``name`` is ``timm:`` + a timm architecture (and a known tag)."""
    timm = _timm()
    arch = timm_arch(name)
    base, _, tag = arch.partition(".")
    if not base or not timm.is_model(base):
        raise UnknownModelError(unknown_model_message(name, builtin, role, role_names))
    if tag and arch not in timm.list_pretrained(f"{base}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{base}.*")]
        raise UnknownModelError(f"timm:{base} has no weight tag {tag!r}; its tags: {', '.join(tags) or 'none'}")


def unknown_model_message(name: str, builtin: list[str], role: str | None = None, role_names: list[str] = ()) -> str:
    """The unknown-name error: the registry's names ``builtin`` (and ``role_names``, those of
    ``role``), timm's, and close matches in both."""
    arch = timm_arch(name)
    kind = f"{role} model" if role else "model"
    what = f"timm {kind} {arch!r}" if is_timm_name(name) else f"{kind} {name!r}"
    head = f"unknown {what}; valid names: {', '.join(builtin)}"
    if role:
        head += f" ({role}s: {', '.join(role_names)})"
    try:
        timm_names = _timm().list_models()
    except BackendUnavailable as e:
        return f"{head} (and timm:NAME, which needs timm: {str(e).split('; ')[-1]})"
    close = difflib.get_close_matches(arch, builtin, n=2, cutoff=0.8)
    close += [TIMM_PREFIX + c for c in difflib.get_close_matches(arch.partition(".")[0], timm_names, n=3, cutoff=0.8)]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"{head}, or timm:NAME for any of timm's {len(timm_names)} architectures "
            f"(e.g. {', '.join(EXAMPLES)}; timm.list_models() lists them){hint}")


def create_timm_model(name: str, num_outputs: int, *, pretrained: str | os.PathLike[str] | None = None) -> Any:
    """A timm model with a ``num_outputs`` head; ``pretrained`` = 'imagenet' (Hugging Face cache, else a
    download, else a one-line error) or a local state dict for the backbone."""
    timm = _timm()
    arch = timm_arch(name)
    if is_imagenet(pretrained):
        path = timm_weight_file(arch)
        try:
            return timm.create_model(arch, pretrained=True, num_classes=num_outputs, exportable=True,
                                     pretrained_cfg_overlay={"file": str(path)})
        except Exception as e:  # noqa: BLE001 - a truncated download, a file for another architecture
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise ArtifactError(f"cannot load {path} into timm:{arch} ({type(e).__name__}: {first}); "
                                "delete it and run again") from None
    model = timm.create_model(arch, pretrained=False, num_classes=num_outputs, exportable=True)
    if pretrained is not None:
        load_backbone_weights(model, pretrained)
    return model


def timm_input_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's ImageNet weights were trained with (timm's pretrained config)."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(timm_arch(name))
    if cfg is None:
        from edgeskd.meta import IMAGENET_MEAN, IMAGENET_STD

        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
