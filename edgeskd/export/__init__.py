"""torch → ONNX export, parity check, metadata; TensorRT engine building."""
