"""Serving many streams: hand models to NVIDIA Triton / DeepStream and serve them on Triton.

* ``repository``: an edgeskd artifact → a Triton model repository (``config.pbtxt``, versioned
  ``model.onnx`` / ``model.plan``, labels, the artifact's metadata in ``parameters``);
* ``deepstream``: an ONNX whose graph takes 0–255 RGB and ends in a Softmax + an ``nvinfer`` config;
* ``server``: ``edgeskd serve`` — Triton (PyTriton's bundled server) running edgeskd's own runners in
  its python backend (``triton_model``, the stub's model);
* ``remote``: ``RemoteRunner``, a runtime Runner whose ``infer`` is a gRPC request to Triton;
* ``loadtest``: N paced streams against one server vs N local processes.

PyTriton and tritonclient (the ``serve`` extra) are imported lazily, only by what needs them.
"""
