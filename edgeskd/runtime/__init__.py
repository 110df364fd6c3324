"""The torch-free runtime: what runs on the edge box (numpy + onnxruntime; TensorRT + CUDA on GPU).

Nothing in this package imports torch, except ``torch_runner`` (for comparisons only).
"""
