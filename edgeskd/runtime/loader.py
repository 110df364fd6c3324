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


def load_runner(path: str | os.PathLike, **kw: Any) -> Runner:
    """A runner for ``path`` (.onnx → ONNX Runtime, .engine → TensorRT, .pt → torch).

    Keyword options a backend does not take (``threads`` for TensorRT, ``providers`` for torch...)
    are dropped, so callers can pass one set of options for every format. ``None`` values are
    dropped too.
    """
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p} does not exist; give an .onnx, .engine or .pt artifact")
    if p.is_dir():
        raise ArtifactError(f"{p} is a directory; give an .onnx, .engine or .pt file")
    cls = runner_class(detect_format(p))
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls(p, **{k: v for k, v in kw.items() if k in accepted and v is not None})
