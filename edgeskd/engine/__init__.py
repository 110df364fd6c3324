"""``edgeskd build-engine``: an FP32 ONNX → the deployable artifact for a backend and precision,
behind an accuracy gate. ``build`` is the entry point; ``cpu`` searches the ONNX Runtime variants,
``tensorrt_build`` builds TensorRT engines, ``report`` holds what was tried and why the winner won.
Quantization itself (calibration, Q/DQ, FP16 conversion) is ``edgeskd.quantize``.
"""
