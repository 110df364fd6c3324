"""What each model is, for choosing one: INT8 / TensorRT friendliness (read off the built model's
module types) and the timm models README's table measures.

A student is INT8-friendly when it has none of the ops that per-tensor symmetric INT8 PTQ handles
badly or leaves in float: hard-swish / hard-sigmoid (MobileNetV3), SiLU / swish, GELU, Mish,
squeeze-excitation (a pooled per-channel gate whose product spans a wide range), attention (softmax
and matmuls over activations with outliers), LayerNorm / GroupNorm. Conv-BN-ReLU(6) networks
quantize cleanly and fuse into Conv+ReLU in TensorRT and ONNX Runtime.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# (fragment of a module's class name, lower case) → the concern it names; the first match wins
# (so HardSwish is "hard-swish", not "SiLU/swish").
_CONCERNS: tuple[tuple[str, str], ...] = (
    ("hardswish", "hard-swish"), ("hardsigmoid", "hard-sigmoid"),
    ("silu", "SiLU/swish"), ("swish", "SiLU/swish"), ("gelu", "GELU"), ("mish", "Mish"),
    ("squeezeexcit", "squeeze-excitation"), ("semodule", "squeeze-excitation"),
    ("attention", "attention"), ("layernorm", "LayerNorm"), ("groupnorm", "GroupNorm"),
)

# timm models README's table lists (and tests build); any timm:NAME works.
TIMM_TEACHERS = ("timm:resnet50", "timm:efficientnet_b0", "timm:convnext_nano")
TIMM_STUDENTS = ("timm:mobilenetv3_small_050", "timm:mobilenetv3_small_100", "timm:mobilenetv4_conv_small",
                 "timm:efficientnet_lite0", "timm:resnet10t", "timm:lcnet_050", "timm:fastvit_t8")
# The INT8-friendly ones of TIMM_STUDENTS (a test reads it off the built models), named by the warning
# without building every model on each run.
TIMM_INT8_FRIENDLY = ("timm:mobilenetv4_conv_small", "timm:efficientnet_lite0", "timm:resnet10t")


def int8_concerns(model: Any) -> list[str]:
    """Ops in ``model`` that INT8 quantizes badly, sorted, each once ([] = INT8 / TensorRT friendly)."""
    found: set[str] = set()
    for m in model.modules():
        kind = type(m).__name__.lower()
        for frag, concern in _CONCERNS:
            if frag in kind:
                found.add(concern)
                break
    return sorted(found)


@lru_cache(maxsize=64)
def model_int8_concerns(name: str) -> tuple[str, ...]:
    """int8_concerns of registry / timm model ``name`` (built once, random weights, 2 outputs)."""
    from edgeskd.models.registry import create_model

    return tuple(int8_concerns(create_model(name, 2)))


def int8_friendly_students() -> list[str]:
    """The registry's students and README's timm students that have no INT8 concern."""
    from edgeskd.models.registry import list_models

    return [n for n in (*list_models("student"), *TIMM_STUDENTS) if not model_int8_concerns(n)]


def int8_warning(name: str) -> str | None:
    """A one-line warning for a student that is not INT8-friendly, else None."""
    from edgeskd.models.registry import list_models

    concerns = model_int8_concerns(name)
    if not concerns:
        return None
    friendly = [n for n in list_models("student") if not model_int8_concerns(n)] + list(TIMM_INT8_FRIENDLY)
    return (f"student {name} has {', '.join(concerns)}: INT8 PTQ tends to lose more accuracy on these ops "
            f"(or keeps them in float); INT8 / TensorRT-friendly students: {', '.join(friendly)}")
