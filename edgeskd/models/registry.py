"""Teachers (torchvision) and students, behind one registry.

``create_model(name, num_outputs, *, img_size=None, pretrained=None)`` returns an ``nn.Module``
mapping (N, 3, img_size, img_size) float → (N, num_outputs) logits; students fit their
down-sampling to ``img_size``. Heads emit subclass logits (teacher, SKD student) or class logits
(plain and KD students) — the caller picks ``num_outputs``. ``pretrained`` is a local state-dict
path for the backbone or ``"imagenet"`` (edgeskd.models.weights: the torch hub / Hugging Face
cache, else a download, else a one-line error). ``timm:ARCH`` names any timm model
(edgeskd.models.timm_models).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgeskd.errors import UnknownModelError, UsageError  # noqa: F401 (UnknownModelError: re-export)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_ROLE: dict[str, str] = {}


def register_model(role: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[fn.__name__] = fn
        _ROLE[fn.__name__] = role
        return fn

    return deco


def _size_aware() -> set[str]:
    import inspect

    return {n for n, f in _REGISTRY.items() if "img_size" in inspect.signature(f).parameters}


def list_models(role: str | None = None) -> list[str]:
    return sorted(n for n in _REGISTRY if role is None or _ROLE[n] == role)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_model_name(name: str, role: str | None = None) -> None:
    """Raise UnknownModelError (listing this registry's names, those of ``role``, and timm's) unless
    ``name`` is a registry name or ``timm:ARCH``."""
    if name in _REGISTRY:
        return
    from edgeskd.models import timm_models

    if timm_models.is_timm_name(name):
        timm_models.check_timm_name(name, list_models(), role, list_models(role) if role else [])
        return
    raise UnknownModelError(timm_models.unknown_model_message(name, list_models(), role,
                                                              list_models(role) if role else []))


def create_model(name: str, num_outputs: int, *, img_size: int | None = None,
                 pretrained: str | Path | None = None) -> nn.Module:
    """``img_size``: the square input size the model will see; the input-size-aware models
    (``tiny_cnn*``, ``wide_cnn``) fit their down-sampling to it (None → ``DEFAULT_IMG_SIZE``);
    torchvision and timm models ignore it. ``pretrained``:
    'imagenet' (local cache, else a download) or a local state dict (backbone only)."""
    check_model_name(name)
    if num_outputs < 2:
        raise UsageError(f"a model needs at least 2 outputs, got {num_outputs}")
    if name.startswith("timm:"):
        from edgeskd.models.timm_models import create_timm_model

        return create_timm_model(name, num_outputs, pretrained=pretrained)
    if name in _size_aware():
        model = _REGISTRY[name](num_outputs, img_size=int(img_size or DEFAULT_IMG_SIZE))
    else:
        model = _REGISTRY[name](num_outputs)
    if pretrained is not None:
        from edgeskd.models.weights import load_pretrained

        load_pretrained(model, name, pretrained)
    return model


# -- teachers (torchvision) -------------------------------------------------------------
def _replace_head(model: nn.Module, attr: str, num_outputs: int) -> nn.Module:
    head = getattr(model, attr)
    if isinstance(head, nn.Sequential):
        last = head[-1]
        head[-1] = nn.Linear(last.in_features, num_outputs)
    else:
        setattr(model, attr, nn.Linear(head.in_features, num_outputs))
    return model


@register_model("teacher")
def resnet18(num_outputs: int) -> nn.Module:
    from torchvision.models import resnet18 as f

    return _replace_head(f(weights=None), "fc", num_outputs)


@register_model("teacher")
def resnet50(num_outputs: int) -> nn.Module:
    from torchvision.models import resnet50 as f

    return _replace_head(f(weights=None), "fc", num_outputs)


@register_model("teacher")
def efficientnet_b0(num_outputs: int) -> nn.Module:
    from torchvision.models import efficientnet_b0 as f

    return _replace_head(f(weights=None), "classifier", num_outputs)


WIDE_PLAN = dict(widths=(32, 64, 128, 256, 512), min_map=3)   # the wide_cnn teachers' stages and final map


@register_model("teacher")
def wide_cnn(num_outputs: int, img_size: int = 224) -> nn.Module:
    """A teacher for small inputs trained from scratch (its half width, ``wide_cnn_050``, is the fast
    preset's): ``TinyCNN``'s plan at twice the width (32-512 channels, 1.6 M parameters, 16x
    ``tiny_cnn_050``), down-sampling to a ~3x3 map. ImageNet-style stems (``resnet18``: 7x7 stride-2
    conv + max-pool) leave a 48-px image at 12x12 after the first layer and lose the fine surface
    texture the subtypes differ in; trained alone at 48 px for 40 epochs ResNet-18 scored below
    ``tiny_cnn``."""
    return TinyCNN(num_outputs, img_size, **WIDE_PLAN)


@register_model("teacher")
def wide_cnn_050(num_outputs: int, img_size: int = 224) -> nn.Module:
    """``wide_cnn`` at half width (16-256 channels, 0.4 M parameters, 4x ``tiny_cnn_050``), the fast
    preset's teacher: a quarter of the compute per image, so it trains ~3x the epochs in the same
    time on a CPU, and on short schedules epochs count for more than width (48 px, 7,800 frames,
    seed 0: test F1 78.9 after 11 epochs against 74.8 for ``wide_cnn`` after 4, about the same time)."""
    return TinyCNN(num_outputs, img_size, **WIDE_PLAN, width=0.5)


# -- students -------------------------------------------------------------------------
DEFAULT_IMG_SIZE = 224   # input size a student is built for when the caller does not say


@register_model("student")
def mobilenet_v3_small(num_outputs: int, img_size: int = DEFAULT_IMG_SIZE) -> nn.Module:
    """torchvision's MobileNetV3-Small (fixed 32x down-sampling; ``img_size`` is not used)."""
    from torchvision.models import mobilenet_v3_small as f

    return _replace_head(f(weights=None), "classifier", num_outputs)


def _cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    k = 3
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def downsampling_steps(img_size: int, min_map: int = 4, max_steps: int = 5) -> int:
    """How many stride-2 steps keep the last feature map at least ``min_map`` px: the largest k
    with img_size / 2**k >= min_map, in [1, max_steps] (32 and 64 px → a 4x4 map, 96 → 6x6,
    224 → 7x7)."""
    if img_size < 2:
        raise UsageError(f"img_size must be >= 2 px, got {img_size}")
    k = int(math.floor(math.log2(max(img_size / min_map, 1.0))))
    return max(1, min(max_steps, k))


class TinyCNN(nn.Module):
    """Edge-friendly student whose down-sampling fits its input: plain conv-BN-ReLU stages (no SE,
    no hard-swish, no depthwise convs), global average pool, linear head. Every op quantizes
    cleanly to INT8 Q/DQ and fuses into Conv+ReLU in TensorRT and ONNX Runtime.

    Five stages of widths ``widths`` (times ``width``: 0.5 halves every stage, a quarter of the
    parameters and multiply-adds); the first ``extra`` stages carry a second 3x3 conv. The input
    size decides only the strides (``downsampling_steps``): the last stages down-sample, so the
    final map is ~4-7 px on a side at any input size (32 px → 4x4, 64 → 4x4, 224 → 7x7); the
    parameter shapes are the same at every size.
    """

    def __init__(self, num_outputs: int, img_size: int = DEFAULT_IMG_SIZE,
                 widths: tuple[int, ...] = (16, 32, 64, 128, 256), extra: int = 0, width: float = 1.0,
                 min_map: int = 4) -> None:
        super().__init__()
        widths = tuple(max(4, int(round(w * width))) for w in widths)
        steps = downsampling_steps(img_size, min_map=min_map, max_steps=len(widths))
        # every stage down-samples at the largest inputs; below that the stem keeps full resolution
        # and the stages after the last step keep the final map size
        strides = [2] * steps if steps == len(widths) else [1] + [2] * steps + [1] * (len(widths) - steps - 1)
        layers: list[nn.Module] = []
        cin = 3
        for i, (w, s) in enumerate(zip(widths, strides)):
            layers += [_cbr(cin, w, stride=s)] + ([_cbr(w, w)] if i < extra else [])
            cin = w
        self.img_size, self.strides = int(img_size), tuple(strides)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@register_model("student")
def tiny_cnn(num_outputs: int, img_size: int = DEFAULT_IMG_SIZE) -> nn.Module:
    return TinyCNN(num_outputs, img_size)


@register_model("student")
def tiny_cnn_050(num_outputs: int, img_size: int = DEFAULT_IMG_SIZE) -> nn.Module:
    """``tiny_cnn`` at half width (8-128 channels): 0.1 M parameters, a quarter of the compute — the
    fast preset's student (the quickstart's CPU budget, and a student far smaller than its teacher)."""
    return TinyCNN(num_outputs, img_size, width=0.5)
