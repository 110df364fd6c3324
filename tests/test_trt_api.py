"""TensorRT without a GPU: engine header round trip, version/arch refusal, the API-name check
against the real bindings wheels, and GPU tests that run only where TensorRT and a GPU exist."""

from __future__ import annotations

import ast
import glob
import importlib.util
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeskd.errors import ArtifactError, BackendUnavailable
from edgeskd.meta import ModelMeta
from edgeskd.runtime.engine_file import EngineHeader, check_compatible, read_engine, read_engine_header, write_engine
from edgeskd.runtime.tensorrt_runner import TRT_API

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".cache" / "trt-wheels"
# The files that talk to TensorRT; names of TensorRT objects in them follow this convention.
TRT_SOURCES = [ROOT / "edgeskd/runtime/tensorrt_runner.py", ROOT / "edgeskd/engine/tensorrt_build.py"]
TRT_OBJECTS = {"trt", "builder", "network", "parser", "config", "profile", "cache", "engine", "err",
               "runtime", "context", "inp", "Severity"}
WHEEL_FOR = {"10": "tensorrt_cu12_bindings-10.*.whl", "11": "tensorrt_cu13_bindings-11.*.whl"}


def _meta():
    return ModelMeta(class_names=["hp", "ssa"], subclass_names=["a", "b", "c"], subclass_to_class=[0, 1, 1],
                     input_size=(32, 32), precision="int8", arch="tiny_cnn")


def _header(**kw):
    d = dict(meta=_meta(), trt_version="10.3.0", compute_capability=(8, 7), input_name="input",
             output_name="subclass_logits", min_batch=1, max_batch=8, device_name="Orin",
             extra={"onnx": "engines/student.int8.qdq.onnx"})
    d.update(kw)
    return EngineHeader(**d)


def test_engine_header_round_trip(tmp_path):
    path = tmp_path / "m.engine"
    plan = bytes(range(256)) * 10
    write_engine(path, plan, _header())
    h, body = read_engine(path)
    assert body == plan
    assert h.to_dict() == read_engine_header(path).to_dict()
    assert h.meta.to_dict() == _meta().to_dict()
    assert (h.trt_version, h.compute_capability, h.max_batch) == ("10.3.0", (8, 7), 8)
    assert len(h.engine_sha256) == 64
    from edgeskd.runtime.formats import Format, detect_format

    assert detect_format(path) is Format.tensorrt


def test_engine_file_corruption_is_reported(tmp_path):
    path = tmp_path / "m.engine"
    write_engine(path, b"x" * 100, _header())
    data = path.read_bytes()
    (tmp_path / "flip.engine").write_bytes(data[:-1] + b"y")
    with pytest.raises(ArtifactError, match="checksum"):
        read_engine(tmp_path / "flip.engine")
    (tmp_path / "trunc.engine").write_bytes(data[:20])
    with pytest.raises(ArtifactError, match="truncated"):
        read_engine(tmp_path / "trunc.engine")
    (tmp_path / "bare.engine").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="no edgeskd engine header"):
        read_engine_header(tmp_path / "bare.engine")


def test_engine_from_other_trt_or_gpu_is_refused():
    h = _header()
    check_compatible(h, trt_version="10.3.0.26", compute_capability=(8, 7))   # same 3-part version: ok
    with pytest.raises(ArtifactError, match=r"TensorRT 10\.3\.0.*11\.4\.0.*build-engine"):
        check_compatible(h, trt_version="11.4.0", compute_capability=(8, 7))
    with pytest.raises(ArtifactError, match=r"compute capability 8\.7.*9\.0.*rebuild"):
        check_compatible(h, trt_version="10.3.0", compute_capability=(9, 0))


def test_builder_profile_and_network_source_without_tensorrt(tmp_path):
    """The builder's pure steps: the profile's batch range, and what is parsed for each precision."""
    import onnx
    from test_runtime import make_onnx

    from edgeskd.engine.tensorrt_build import batch_range, network_source
    from edgeskd.errors import UsageError

    assert batch_range(-1, 8, None, "m.onnx") == (1, 8, 8)
    assert batch_range(-1, 8, 4, "m.onnx") == (1, 4, 8) and batch_range(-1, 8, 99, "m.onnx") == (1, 8, 8)
    assert batch_range(4, 4, None, "m.onnx") == (4, 4, 4)
    with pytest.raises(UsageError, match="fixed batch of 4.*--batch dynamic"):
        batch_range(4, 8, None, "m.onnx")
    path = tmp_path / "m.onnx"
    onnx.save(make_onnx(), path)
    raw = path.read_bytes()
    assert network_source(path, "int8", 10) == (raw, True) and network_source(path, "fp32", 11) == (raw, True)
    assert network_source(path, "fp16", 10) == (raw, False)        # TRT 10: FP16 flag, weakly typed
    pytest.importorskip("onnxconverter_common")
    fp16, strongly_typed = network_source(path, "fp16", 11)       # TRT 11: an FP16 ONNX, strongly typed
    assert strongly_typed and fp16 != raw
    from edgeskd.runtime.onnxrt import read_onnx_summary

    assert read_onnx_summary(fp16).precision() == "fp16"


def test_cuda_index_accepts_one_device_option_for_all_backends():
    from edgeskd.errors import UsageError
    from edgeskd.runtime.tensorrt_runner import cuda_index

    assert [cuda_index(d) for d in (None, 0, 2, "cuda", "cuda:1", "3", "cpu")] == [0, 0, 2, 0, 1, 3, 0]
    with pytest.raises(UsageError):
        cuda_index("cuda:x")


def test_tensorrt_runner_without_tensorrt_says_what_is_missing(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    path = tmp_path / "m.engine"
    write_engine(path, b"plan", _header())
    from edgeskd.runtime.loader import load_runner

    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        load_runner(path)


# -- API names vs the real bindings ---------------------------------------------------------------
def _is_trt_object(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Name):
        return expr.id in TRT_OBJECTS
    # self.engine, self._runtime, self.trt ...
    return (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self"
            and expr.attr.lstrip("_") in TRT_OBJECTS)


def _rooted_at_trt(expr: ast.expr) -> bool:
    while isinstance(expr, ast.Attribute) and not _is_trt_object(expr):
        expr = expr.value
    return _is_trt_object(expr)


def _used_trt_names() -> set[str]:
    """Attribute names accessed on TensorRT objects in the TRT sources (by naming convention)."""
    used: set[str] = set()
    for src in TRT_SOURCES:
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Attribute) and not _is_trt_object(node) and _rooted_at_trt(node.value):
                used.add(node.attr)
    # Python-side attributes of our own logger object are not TensorRT API.
    return used - {"messages", "errors", "__init__"}


def test_trt_sources_use_only_declared_names():
    assert all(p.is_file() for p in TRT_SOURCES), "a TRT source file is missing"
    used = _used_trt_names()
    declared = set(TRT_API["common"]) | set(TRT_API["10"]) | set(TRT_API["11"])
    undeclared = sorted(used - declared)
    assert not undeclared, f"TensorRT names used but not declared in TRT_API: {undeclared}"
    assert {"build_serialized_network", "execute_async_v3", "set_input_shape"} <= used


def _wheel_symbols(major: str) -> tuple[bytes, str]:
    found = sorted(glob.glob(str(WHEELS / WHEEL_FOR[major])))
    if not found:
        pytest.skip(f"TensorRT {major}.x bindings wheel not in {WHEELS} (CI downloads it: see .ci/run)")
    with zipfile.ZipFile(found[-1]) as z:
        so = next(n for n in z.namelist() if n.endswith("/tensorrt.so"))
        py = next(n for n in z.namelist() if n.endswith("tensorrt_bindings/__init__.py"))
        return z.read(so), z.read(py).decode("utf-8", "replace")


@pytest.mark.parametrize("major", ["10", "11"])
def test_trt_api_names_exist_in_bindings(major):
    so, init_py = _wheel_symbols(major)
    names = set(TRT_API["common"]) | set(TRT_API[major])

    def present(n: str) -> bool:   # a pybind-registered name is a NUL-terminated C string
        return (n.encode() + b"\0") in so or re.search(rf"\b{re.escape(n)}\b", init_py) is not None

    missing = sorted(n for n in names if not present(n))
    assert not missing, f"TensorRT {major}.x bindings lack: {missing}"


def test_trt_api_check_can_fail():
    """The check discriminates: names removed in TRT 11 are absent from its bindings."""
    so11, init11 = _wheel_symbols("11")
    so10, _ = _wheel_symbols("10")
    for gone in ("int8_calibrator", "EXPLICIT_BATCH"):
        assert (gone.encode() + b"\0") in so10
        assert (gone.encode() + b"\0") not in so11 and gone not in init11


# -- GPU ------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_tensorrt_build_and_run_matches_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    from edgeskd.engine.tensorrt_build import build_tensorrt_engine
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner
    from edgeskd.runtime.tensorrt_runner import TensorRTRunner

    import onnx
    from test_runtime import make_onnx

    meta = ModelMeta(class_names=["hp", "ssa"], subclass_names=list("abcde"), subclass_to_class=[0, 0, 1, 1, 1],
                     input_size=(16, 16), arch="tiny")
    onnx_path = tmp_path / "m.onnx"
    onnx.save(make_onnx(meta=meta), onnx_path)
    eng = build_tensorrt_engine(onnx_path, tmp_path / "m.engine", precision="fp32", max_batch=4,
                                timing_cache=tmp_path / "timing.cache")
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    with TensorRTRunner(eng) as r:
        y = r.infer(x)
        assert r.input_shape == (-1, 3, 16, 16)
    np.testing.assert_allclose(y, OnnxRuntimeRunner(onnx_path).infer(x), rtol=1e-3, atol=1e-3)
    assert (tmp_path / "timing.cache").stat().st_size > 0
