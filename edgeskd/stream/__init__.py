"""Real-time video: source (decoder thread) → preprocess → runner → smoothing → overlay/sinks → stats.

Heavy libraries (PyAV, onnxruntime, CUDA) are imported inside functions; importing this package
is cheap.
"""

from edgeskd.stream.pipeline import StreamConfig, StreamResult, run_stream

__all__ = ["StreamConfig", "StreamResult", "run_stream"]
