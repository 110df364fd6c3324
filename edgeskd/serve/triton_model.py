"""The Triton python-backend model that ``edgeskd serve`` runs: edgeskd's own runner (ONNX Runtime on
CPU, TensorRT on GPU) inside Triton's python-backend stub process.

``edgeskd serve`` copies this file to ``<runtime repository>/<model>/1/model.py`` and writes
``serve.json`` beside it (the artifact to load, its device and threads, the tensor names). Triton's
dynamic batcher hands ``execute`` the requests it has gathered; they run as one batch. Only the stub
imports this module (``triton_python_backend_utils`` exists nowhere else).
"""

from __future__ import annotations

import json
import os
import site

import numpy as np
import triton_python_backend_utils as pb_utils

SERVE_FILE = "serve.json"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, SERVE_FILE), encoding="utf-8") as f:
            cfg = json.load(f)
        for d in cfg.get("site_dirs", []):   # the stub's Python runs no `site`: the .pth files of serve's
            site.addsitedir(d)               # interpreter (editable installs) are processed here
        from edgeskd.runtime.loader import load_runner

        device = cfg["device"]
        self.runner = load_runner(cfg["artifact"], threads=int(cfg["threads"]),
                                  device=device if device.startswith("cuda") else None)
        self.input_name, self.output_name = cfg["input"], cfg["output"]
        self.runner.activate()   # load the model (and warm it) before Triton reports the model ready
        self.runner.infer(np.zeros((1, 3, *self.runner.metadata.input_size), np.float32))

    def execute(self, requests: list) -> list:
        xs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            y = self.runner.infer(xs[0] if len(xs) == 1 else np.concatenate(xs))
        except Exception as e:  # noqa: BLE001 - one error per request, the server keeps serving
            err = pb_utils.TritonError(f"edgeskd runner: {' '.join(str(e).split()) or type(e).__name__}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        out, start = [], 0
        for x in xs:
            part = np.ascontiguousarray(y[start:start + len(x)], dtype=np.float32)
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)]))
            start += len(x)
        return out

    def finalize(self) -> None:
        self.runner.deactivate()
