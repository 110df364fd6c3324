"""Torch-free runtime: format table, OnnxRuntimeRunner (metadata, overrides, input checks), loader,
metrics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeskd.errors import ArtifactError, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.runtime.formats import FORMATS, Format, detect_format
from edgeskd.runtime.loader import load_runner
from edgeskd.runtime.onnxrt import OnnxRuntimeRunner


def _meta(**kw):
    d = dict(class_names=["hp", "ssa"], subclass_names=["a", "b", "c", "d", "e"],
             subclass_to_class=[0, 0, 1, 1, 1], input_size=(16, 16), arch="tiny", output="subclass_logits")
    d.update(kw)
    return ModelMeta(**d)


def make_onnx(k=5, hw=(16, 16), batch="N", out_name="subclass_logits", meta: ModelMeta | None = None, seed=0):
    """A small Conv → ReLU → GAP → Gemm ONNX, built with onnx.helper (no torch)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(k, 8)).astype(np.float32)
    b = rng.normal(size=(k,)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "fc", "b"], [out_name], transB=1)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *hw])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, k])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(b, "b")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if meta is not None:
        helper.set_model_props(m, meta.to_props())
    onnx.checker.check_model(m, full_check=True)
    return m


def _reference(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(m).run(None, {"input": x})[0]


def test_format_table_and_detection(tmp_path):
    assert detect_format("a/model.int8.qdq.onnx") is Format.onnx
    assert detect_format("m.engine") is Format.tensorrt and detect_format("m.plan") is Format.tensorrt
    assert detect_format("student-skd.pt") is Format.torch
    assert FORMATS[Format.onnx].cpu and not FORMATS[Format.tensorrt].cpu
    odd = tmp_path / "model.bin"
    from edgeskd.runtime.formats import ENGINE_MAGIC

    odd.write_bytes(ENGINE_MAGIC + b"rest")
    assert detect_format(odd) is Format.tensorrt
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ArtifactError, match="cannot tell the format"):
        detect_format(tmp_path / "x.txt")


def test_onnxrt_runner_reads_metadata_and_matches_reference(tmp_path):
    meta = _meta()
    m = make_onnx(meta=meta)
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    x = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    with load_runner(path, threads=1) as r:
        assert isinstance(r, OnnxRuntimeRunner)
        assert r.metadata.to_dict() == meta.to_dict()
        assert r.input_shape == (-1, 3, 16, 16)
        y = r.infer(x)
    assert y.shape == (3, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y, _reference(m, x), rtol=1e-5, atol=1e-5)
    from edgeskd.runtime.evaluate import predict_proba

    pc, ps = predict_proba(r, x)
    assert pc.shape == (3, 2) and ps.shape == (3, 5)
    np.testing.assert_allclose(pc[:, 1], ps[:, 2:].sum(1), rtol=1e-5)   # class prob = its subclass block
    # bytes in, same answer
    y2 = OnnxRuntimeRunner(m.SerializeToString(), threads=1).infer(x)
    np.testing.assert_array_equal(y, y2)


def test_onnxrt_runner_missing_metadata_named_and_overridable(tmp_path):
    path = tmp_path / "foreign.onnx"
    onnx.save(make_onnx(k=2, out_name="logits", batch="N"), path)
    with pytest.raises(ArtifactError, match="class_names") as ei:
        OnnxRuntimeRunner(path)
    assert "--classes" in str(ei.value)
    # static 16x16 input → input_size comes from the graph; classes from the user.
    r = OnnxRuntimeRunner(path, meta_overrides={"class_names": ["neg", "pos"]})
    assert r.meta.output == "class_logits" and r.meta.input_size == (16, 16) and r.meta.precision == "fp32"
    assert r.meta.subclass_to_class == [0, 1]
    # wrong class count for the output width → one-line error
    with pytest.raises(ArtifactError, match="outputs 2 values"):
        OnnxRuntimeRunner(path, meta_overrides={"class_names": ["a", "b", "c"]})


def test_onnxrt_runner_input_checks(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(make_onnx(meta=_meta()), path)
    r = OnnxRuntimeRunner(path)
    with pytest.raises(UsageError, match="rank 3"):
        r.infer(np.zeros((3, 16, 16), np.float32))
    with pytest.raises(UsageError, match="does not match"):
        r.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UsageError, match="uint8"):
        r.infer(np.zeros((1, 3, 16, 16), np.uint8))
    with pytest.raises(UsageError, match="numpy"):
        r.infer([[0.0]])
    # float64 is accepted and converted
    assert r.infer(np.zeros((2, 3, 16, 16), np.float64)).shape == (2, 5)


def test_static_batch_model_runs_any_batch(tmp_path):
    meta = _meta()
    m = make_onnx(meta=meta, batch=4)
    path = tmp_path / "b4.onnx"
    onnx.save(m, path)
    r = OnnxRuntimeRunner(path)
    assert r.input_shape == (4, 3, 16, 16)
    x = np.random.default_rng(2).normal(size=(6, 3, 16, 16)).astype(np.float32)
    y = r.infer(x)
    ref = np.concatenate([_reference(m, x[:4]), _reference(m, np.concatenate([x[4:], np.zeros_like(x[:2])]))[:2]])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="cannot load"):
        load_runner(bad)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_runner(tmp_path / "nope.onnx")


def test_runtime_imports_without_torch():
    code = (
        "import sys; import edgeskd.runtime.onnxrt, edgeskd.runtime.loader, edgeskd.runtime.formats,"
        " edgeskd.metrics, edgeskd.runtime.engine_file, edgeskd.runtime.tensorrt_runner,"
        " edgeskd.runtime.cuda_binding, edgeskd.runtime.evaluate, edgeskd.runtime.fake, edgeskd.runtime.timing;"
        "bad=[m for m in ('torch','tensorrt','pycuda','cuda','sklearn') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_running_an_onnx_needs_no_torch(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(make_onnx(meta=_meta()), path)
    code = (
        "import sys, numpy as np; from edgeskd.runtime.loader import load_runner;"
        f"r = load_runner({str(path)!r}, threads=1); print(r.metadata.precision);"
        "r.activate(); r.infer(np.zeros((1, 3, 16, 16), np.float32)); r.deactivate();"
        "bad=[m for m in ('torch','sklearn') if m in sys.modules]; assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "fp32"


# -- loader / runner lifecycle ----------------------------------------------------------------------
def test_onnx_loader_reads_metadata_and_the_session_lives_between_activate_and_deactivate(tmp_path):
    from edgeskd.runtime.onnxrt import OnnxArtifact, load_onnx

    meta = _meta()
    path = tmp_path / "m.onnx"
    onnx.save(make_onnx(meta=meta, batch=4), path)
    art = load_onnx(path)
    assert isinstance(art, OnnxArtifact) and art.meta.to_dict() == meta.to_dict()
    assert (art.input_name, art.output_name, art.static_batch, art.path) == ("input", "subclass_logits", 4, path)
    r = OnnxRuntimeRunner(art, threads=1)
    assert r.session is None and not r.active                     # nothing built yet
    assert r.metadata.to_dict() == meta.to_dict() and r.input_shape == (4, 3, 16, 16)
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    with r:
        assert r.session is not None and r.providers == ["CPUExecutionProvider"]
        y = r.infer(x)
    assert r.session is None and not r.active                     # freed on deactivate
    with r:                                                       # and built again
        np.testing.assert_array_equal(r.infer(x), y)


def test_onnx_runtime_errors_surface_at_activation(tmp_path):
    """A graph that parses but that ONNX Runtime cannot run: metadata is readable, activate says why."""
    meta = _meta()
    m = make_onnx(meta=meta)
    m.graph.node[1].op_type = "NoSuchOp"
    path = tmp_path / "bad_op.onnx"
    onnx.save(m, path)
    r = load_runner(path)
    assert r.metadata.output == "subclass_logits"
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot load"):
        r.activate()
    assert not r.active
    with pytest.raises(UsageError, match="threads"):
        OnnxRuntimeRunner(path, threads=0)


def _qdq_and_fp16_models():
    """(Q/DQ model, FP16-weight model) without edgeskd metadata."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 8, 8])
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "z")
    qdq = helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["logits"])], "qdq", [x], [y], [scale, zp]),
        opset_imports=[helper.make_opsetid("", 17)])
    half = numpy_helper.from_array(np.ones((1,), np.float16), "h")
    fp16 = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["input"], ["xh"], to=TensorProto.FLOAT16),
         helper.make_node("Mul", ["xh", "h"], ["yh"]),
         helper.make_node("Cast", ["yh"], ["logits"], to=TensorProto.FLOAT)], "fp16", [x], [y], [half]),
        opset_imports=[helper.make_opsetid("", 17)])
    return qdq, fp16


def test_onnx_summary_matches_onnx_runtime():
    """The loader's summary sees what ONNX Runtime sees: I/O names and shapes (weights listed as
    inputs, as before IR 4, are not inputs), metadata_props, node and weight types."""
    import onnxruntime as ort

    from edgeskd.runtime.onnxrt import read_onnx_summary

    old_style = make_onnx(meta=_meta())
    for init in old_style.graph.initializer:
        old_style.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    qdq, fp16 = _qdq_and_fp16_models()
    models = [make_onnx(meta=_meta()), make_onnx(k=2, out_name="logits", batch=3), old_style, qdq, fp16]
    for m in models:
        blob = m.SerializeToString()
        s = read_onnx_summary(blob)
        sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        assert s.inputs == [(i.name, list(i.shape)) for i in sess.get_inputs()]
        assert s.outputs == [(o.name, list(o.shape)) for o in sess.get_outputs()]
        assert s.metadata == {p.key: p.value for p in m.metadata_props}
        assert s.op_types == {n.op_type for n in m.graph.node}
        assert s.weight_types == {t.data_type for t in m.graph.initializer}
    assert [read_onnx_summary(m.SerializeToString()).precision() for m in models] == \
        ["fp32", "fp32", "fp32", "int8", "fp16"]
    not_utf8 = make_onnx().SerializeToString().replace(b"input", b"inpu\xff")   # a name that is not UTF-8
    for junk in (b"not an onnx file", b"\x3a\xff\xff", b"\x08", not_utf8):
        with pytest.raises(ArtifactError, match="not an ONNX model"):
            read_onnx_summary(junk)


def test_precision_of_a_foreign_onnx_comes_from_its_graph(tmp_path):
    qdq, fp16 = _qdq_and_fp16_models()
    over = {"class_names": ["a", "b", "c"]}
    for m, want in ((qdq, "int8"), (fp16, "fp16")):
        m.graph.output[0].type.tensor_type.shape.dim.pop()   # (N, 3, 8, 8) → (N, 3, 8): not a logits shape,
        m.graph.output[0].type.tensor_type.shape.dim.pop()   # then (N, 3): three class logits
        assert OnnxRuntimeRunner(m.SerializeToString(), meta_overrides=over).metadata.precision == want


def test_fake_runner_lifecycle_and_wrapping(tmp_path):
    from edgeskd.runtime.fake import FakeRunner

    meta = _meta()
    fake = FakeRunner(meta, max_batch=2)
    x = np.ones((2, 3, 16, 16), np.float32)
    with fake:
        np.testing.assert_array_equal(fake.infer(x), np.zeros((2, 5), np.float32))
        with pytest.raises(UsageError, match="max batch"):
            fake.infer(np.ones((3, 3, 16, 16), np.float32))
    assert (fake.calls, fake.activations, fake.deactivations) == (1, 1, 1)
    path = tmp_path / "m.onnx"
    onnx.save(make_onnx(meta=meta), path)
    real = load_runner(path, threads=1)
    doubled = FakeRunner.wrapping(real, lambda model, batch: 2 * model.infer(batch))
    with doubled:
        assert real.active
        got = doubled.infer(x)
    assert not real.active
    with real:
        np.testing.assert_allclose(got, 2 * real.infer(x), rtol=1e-6)
