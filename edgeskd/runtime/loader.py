"""``load_runner(path)``: pick the backend from the artifact (the format table in formats.py)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from edgeskd.errors import ArtifactError
from edgeskd.runtime.base import Runner
from edgeskd.runtime.formats import Format, detect_format


def runner_class(fmt: Format) -> type[Runner]:
    if fmt is Format.onnx:
        from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner
    if fmt is Format.tensorrt:
        from edgeskd.runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner
    from edgeskd.runtime.torch_runner import TorchRunner

    return TorchRunner


def device_options(fmt: Format, device: str | int | None) -> dict[str, Any]:
    """The backend's own options for one ``--device`` value (auto | cpu | cuda:N): torch takes the
    device string, TensorRT the GPU index (it always runs on a GPU), ONNX Runtime its CUDA execution
    provider on that GPU (a CPU-only onnxruntime says so in one line when it is asked for)."""
    d = f"cuda:{device}" if isinstance(device, int) else (device or "auto").lower()
    if fmt is Format.tensorrt:   # always on a GPU ("cpu" / "auto": the first one; the CLI refuses cpu)
        return {"device": int(d[5:]) if d.startswith("cuda:") else 0}
    if not d.startswith("cuda"):
        return {"device": "cpu"} if fmt is Format.torch else {}
    index = int(d[5:]) if d.startswith("cuda:") else 0
    if fmt is Format.torch:
        return {"device": f"cuda:{index}"}
    return {"providers": [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]}


def load_runner(path: str | os.PathLike, *, device: str | int | None = None, **kw: Any) -> Runner:
    """A runner for ``path`` (.onnx → ONNX Runtime, .engine → TensorRT, .pt → torch) on ``device``
    (auto | cpu | cuda:N; see ``device_options``).

    Keyword options a backend does not take (``threads`` for TensorRT, ``providers`` for torch...)
    are dropped, so callers can pass one set of options for every format. ``None`` values are
    dropped too.
    """
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p} does not exist; give an .onnx, .engine or .pt artifact")
    if p.is_dir():
        raise ArtifactError(f"{p} is a directory; give an .onnx, .engine or .pt file")
    fmt = detect_format(p)
    cls = runner_class(fmt)
    if device is not None:
        kw = {**device_options(fmt, device), **kw}
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls(p, **{k: v for k, v in kw.items() if k in accepted and v is not None})
