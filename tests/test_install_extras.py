"""The install paths in pyproject.toml: each GPU extra is one consistent stack pip cannot mix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")
packaging = pytest.importorskip("packaging.requirements")

ROOT = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, dict[str, object]]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {k: {packaging.Requirement(r).name: packaging.Requirement(r).specifier for r in v} for k, v in extras.items()}


def test_gpu_extras_pin_one_stack_each():
    e = _extras()
    cu12, cu13 = e["gpu-cu12"], e["gpu-cu13"]
    assert "10.3.0" in cu12["tensorrt-cu12"] and "10.16.1" in cu12["tensorrt-cu12"]
    assert "11.4.0" not in cu12["tensorrt-cu12"] and "10.2.0" not in cu12["tensorrt-cu12"]
    assert "12.9.4" in cu12["cuda-python"] and "12.8.0" in cu12["cuda-python"]
    assert "12.6.2.post1" not in cu12["cuda-python"]   # loads NVRTC by name only: misses the pip wheel
    assert "13.0.0" not in cu12["cuda-python"] and "12.5.0" not in cu12["cuda-python"]   # 12.5: old layout only
    assert "11.4.0" in cu13["tensorrt-cu13"] and "10.16.1" not in cu13["tensorrt-cu13"]
    assert "13.0.3" in cu13["cuda-python"] and "12.9.4" not in cu13["cuda-python"]
    for stack in (cu12, cu13):
        assert "onnxconverter-common" in stack                       # FP16 engines on TensorRT 11
        assert any(n.startswith("nvidia-cuda-nvrtc") for n in stack)  # NVRTC is optional in cuda-python
    assert set(e["gpu"]) == {"edgeskd"}                               # alias of gpu-cu12
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert raw["gpu"] == ["edgeskd[gpu-cu12]"]


def test_jetson_extra_uses_the_system_tensorrt():
    j = _extras()["jetson"]
    assert not any(n.startswith("tensorrt") for n in j)               # JetPack's TensorRT 10.3, a system package
    assert "12.9.4" in j["cuda-python"] and "13.0.0" not in j["cuda-python"] and "12.6.2" not in j["cuda-python"]


def test_train_needs_a_torch_that_exports_with_dynamo_false():
    t = _extras()["train"]["torch"]
    assert "2.4.1" not in t and "2.5.0" in t          # torch.onnx.export(dynamo=False): 2.5 (GradScaler("cuda"): 2.3)
    assert "0.19.1" not in _extras()["train"]["torchvision"]
