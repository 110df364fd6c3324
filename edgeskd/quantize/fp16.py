"""FP16 ONNX: float16 weights and activations with float32 inputs and outputs (onnxconverter-common),
for ONNX Runtime's FP16 artifact and TensorRT 11, whose strongly typed networks take their
precision from the ONNX."""

from __future__ import annotations

import os


def fp16_onnx_bytes(onnx_path: str | os.PathLike) -> bytes:
    """An FP16 copy of an FP32 ONNX with float32 inputs/outputs (``keep_io_types=True``)."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(onnx_path))
    fp16 = float16.convert_float_to_float16(model, keep_io_types=True)
    return fp16.SerializeToString()
