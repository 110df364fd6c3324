"""One table of artifact formats (Ultralytics ``export_formats()`` idea, as a frozen dataclass).

Format detection (``detect_format``), ``load_runner`` and the benchmark loop all read this table;
nothing else in the code base lists suffixes or backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from edgeskd.errors import ArtifactError

ENGINE_MAGIC = b"EDGESKD-TRT\x00"   # first bytes of an edgeskd TensorRT engine file (engine_file.py)
ONNX_PRECISIONS = ("fp32", "fp16", "int8")


class Format(str, Enum):
    onnx = "onnx"            # FP32 / FP16 / Q-DQ INT8 ONNX, run by ONNX Runtime (CPU, or its GPU EPs)
    tensorrt = "tensorrt"    # serialized TensorRT engine with an edgeskd JSON header
    torch = "torch"          # an edgeskd training checkpoint (comparison only; needs torch)


@dataclass(frozen=True)
class FormatSpec:
    format: Format
    suffixes: tuple[str, ...]        # matched against the end of the file name, longest first
    backend: str                     # runner backend name
    cpu: bool                        # runs on a CPU-only edge box
    gpu: bool                        # can run on an NVIDIA GPU
    needs: tuple[str, ...]           # Python modules the runner imports
    precisions: tuple[str, ...]      # what the artifact may hold
    description: str


FORMATS: dict[Format, FormatSpec] = {
    Format.onnx: FormatSpec(
        Format.onnx, (".onnx",), "onnxruntime", True, True, ("onnxruntime",), ONNX_PRECISIONS,
        "ONNX (FP32, FP16, or INT8 Q/DQ) with edgeskd metadata_props",
    ),
    Format.tensorrt: FormatSpec(
        Format.tensorrt, (".engine", ".plan", ".trt"), "tensorrt", False, True,
        ("tensorrt", "cuda.bindings"), ("fp32", "fp16", "int8"),
        "TensorRT engine: JSON header (metadata, TRT version, GPU arch) + serialized engine",
    ),
    Format.torch: FormatSpec(
        Format.torch, (".pt", ".pth"), "torch", True, True, ("torch",), ("fp32",),
        "edgeskd checkpoint (torch eager; for comparisons only)",
    ),
}


def spec_of(fmt: Format | str) -> FormatSpec:
    return FORMATS[Format(fmt)]


def all_suffixes() -> list[str]:
    return [s for spec in FORMATS.values() for s in spec.suffixes]


def detect_format(path: str | Path) -> Format:
    """Format of an artifact from its suffix; the engine magic wins over an unusual suffix."""
    p = Path(path)
    name = p.name.lower()
    for spec in FORMATS.values():
        if any(name.endswith(s) for s in spec.suffixes):
            return spec.format
    if p.is_file():
        with open(p, "rb") as f:
            if f.read(len(ENGINE_MAGIC)) == ENGINE_MAGIC:
                return Format.tensorrt
    raise ArtifactError(
        f"cannot tell the format of {p.name}; expected one of {', '.join(all_suffixes())}"
    )
