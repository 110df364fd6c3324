"""Calibration sets and Q/DQ INT8 quantization (ONNX Runtime quantize_static), CPU variant search, accuracy gate."""
