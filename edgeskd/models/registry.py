"""Teachers (torchvision) and students, behind one registry.

``create_model(name, num_outputs, pretrained=None)`` returns an ``nn.Module`` mapping
(N, 3, H, W) float → (N, num_outputs) logits. Heads emit subclass logits (teacher, SKD student)
or class logits (plain and KD students) — the caller picks ``num_outputs``. ``pretrained`` is a
local state-dict path for the backbone or ``"imagenet"`` (edgeskd.models.weights: the torch hub /
Hugging Face cache, else a download, else a one-line error). ``timm:ARCH`` names any timm model
(edgeskd.models.timm_models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgeskd.errors import UsageError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_ROLE: dict[str, str] = {}


def register_model(role: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[fn.__name__] = fn
        _ROLE[fn.__name__] = role
        return fn

    return deco


def list_models(role: str | None = None) -> list[str]:
    return sorted(n for n in _REGISTRY if role is None or _ROLE[n] == role)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class UnknownModelError(UsageError, ValueError):
    """An unknown model name (a UsageError for the CLI, a ValueError for library callers)."""


def check_model_name(name: str, role: str | None = None) -> None:
    """Raise UnknownModelError (listing this registry's names, those of ``role``, and timm's) unless
    ``name`` is a registry name or ``timm:ARCH``."""
    if name in _REGISTRY:
        return
    from edgeskd.models import timm_models

    if timm_models.is_timm_name(name):
        timm_models.check_timm_name(name, list_models(), role)
        return
    raise UnknownModelError(timm_models.unknown_model_message(name, list_models(), role))


def create_model(name: str, num_outputs: int, *, pretrained: str | Path | None = None) -> nn.Module:
    """``pretrained``: 'imagenet' (local cache, else a download) or a local state dict (backbone only)."""
    check_model_name(name)
    if num_outputs < 2:
        raise UsageError(f"a model needs at least 2 outputs, got {num_outputs}")
    if name.startswith("timm:"):
        from edgeskd.models.timm_models import create_timm_model

        return create_timm_model(name, num_outputs, pretrained=pretrained)
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


# -- students -------------------------------------------------------------------------
@register_model("student")
def mobilenet_v3_small(num_outputs: int) -> nn.Module:
    from torchvision.models import mobilenet_v3_small as f

    return _replace_head(f(weights=None), "classifier", num_outputs)


def _cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    k = 3
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """Edge-friendly student: conv-BN-ReLU blocks (depthwise-separable after the stem), no SE, no
    hard-swish, global average pool, linear head. Every op quantizes cleanly to INT8 Q/DQ and fuses
    into Conv+ReLU in TensorRT and ONNX Runtime."""

    def __init__(self, num_outputs: int, widths: tuple[int, ...] = (24, 48, 96, 160, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cbr(3, widths[0], stride=2)]
        cin = widths[0]
        for i, w in enumerate(widths[1:]):
            layers += [
                _cbr(cin, cin, stride=2 if i < 4 else 1, groups=cin),  # depthwise
                nn.Sequential(nn.Conv2d(cin, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)),
                _cbr(w, w, groups=w),
                nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)),
            ]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@register_model("student")
def tiny_cnn(num_outputs: int) -> nn.Module:
    return TinyCNN(num_outputs)
