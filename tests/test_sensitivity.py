"""PTQ recovery: the layer made deliberately sensitive to INT8 is ranked first and is the one kept in
FP32; the Q/DQ model with it in FP32 passes the gate and still fits TensorRT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeskd.meta import ModelMeta

META = ModelMeta(class_names=["dark", "bright"], subclass_names=["dark", "bright"], subclass_to_class=[0, 1],
                 input_size=(16, 16), output="class_logits", arch="handmade", model_name="sensitive")


def sensitive_onnx(path):
    """stem (1x1: brightness + a near-zero channel) → ReLU → mid (1x1) → ReLU → tail (1x1) → GAP → head.

    ``mid`` carries the class signal with a small weight (0.02) next to a large weight (40) on the
    near-zero channel: per-channel INT8 gives that output channel a scale of 40/127, so the 0.02
    rounds to 0 and every image reads as dark. Every other layer quantizes harmlessly."""
    stem = np.zeros((2, 3, 1, 1), np.float32)
    stem[0] = 1.0 / 3
    stem[1] = 1e-4
    mid = np.array([[0.02, 40.0], [0.0, 1.0]], np.float32).reshape(2, 2, 1, 1)
    mid_b = np.array([0.0, 0.5], np.float32)
    tail = np.array([[10.0, 0.0], [0.0, 1.0]], np.float32).reshape(2, 2, 1, 1)
    fc = np.array([[0.0, 0.0], [1.0, -0.26]], np.float32)        # bright logit = 10·0.02·b − 0.26·0.5
    nodes = [
        helper.make_node("Conv", ["input", "stem"], ["a"], name="stem"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "mid", "mid_b"], ["b"], name="mid"),
        helper.make_node("Relu", ["b"], ["br"], name="relu_b"),
        helper.make_node("Conv", ["br", "tail"], ["c"], name="tail"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc"], ["class_logits"], transB=1, name="head"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((stem, "stem"), (mid, "mid"), (mid_b, "mid_b"),
                                                          (tail, "tail"), (fc, "fc"))]
    g = helper.make_graph(nodes, "sensitive", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["N", 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, META.to_props())
    onnx.save(m, str(path))
    return path


@pytest.fixture
def setup(tmp_path):
    from test_quant import bright_set

    from edgeskd.quantize.calibration import cache_path, select_calibration

    path = sensitive_onnx(tmp_path / "sensitive.onnx")
    ls = bright_set(200, seed=3)
    val = ls.split("val")
    calib = select_calibration(ls, META, size=100, batch_size=25)
    cache = cache_path(path.read_bytes(), calib, "minmax", directory=tmp_path / "calib")
    return path, val, calib, cache


@pytest.mark.parametrize("mode", ["only", "leave-out"])
def test_the_sensitive_layer_is_the_one_kept_in_fp32(setup, mode, tmp_path):
    from edgeskd.quantize.qdq import inspect_qdq, quantize_qdq
    from edgeskd.quantize.sensitivity import search_fp32_fallback
    from edgeskd.engine.report import f1_percent
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    path, val, calib, cache = setup
    fp32_f1 = f1_percent(OnnxRuntimeRunner(path), val)
    assert fp32_f1 == 100.0
    res = search_fp32_fallback(path, META, val, cache=cache, calib=calib, max_f1_drop=1.0, mode=mode,
                               time_budget_s=120)
    assert res.trials[0].fp32_nodes == [] and not res.trials[0].passed       # full INT8 fails the gate
    assert res.trials[0].f1_drop > 50
    assert [s.node for s in res.ranking][0] == "mid"
    assert {s.node for s in res.ranking} == {"stem", "mid", "tail"}           # the head is FP32 anyway
    # 'mid' is kept first; where ORT's int8 kernels saturate (no VNNI: DESIGN §4) the search may keep
    # one more layer to pass the gate
    assert res.passed and res.fp32_nodes[0] == "mid" and len(res.fp32_nodes) <= 2 and res.f1_drop <= 1.0
    assert not res.stopped
    # the same list builds the TensorRT Q/DQ ONNX and the CPU (u8s8) one; both keep those layers in FP32 only
    for variant in ("s8s8", "u8s8"):
        q = quantize_qdq(path, tmp_path / f"{variant}.onnx", META, calib=None, cache=cache, variant=variant,
                         fp32_nodes=res.fp32_nodes)
        assert f1_percent(OnnxRuntimeRunner(q), val) >= fp32_f1 - 1.0
        rep = inspect_qdq(q)
        assert sorted(rep.fp32_layers) == sorted(res.fp32_nodes) and rep.quantized_convs == 3 - len(res.fp32_nodes)
        if variant == "s8s8":
            assert rep.problems() == []


def test_fallback_bad_input_and_budget(setup):
    from edgeskd.errors import UsageError
    from edgeskd.quantize.qdq import quantize_qdq
    from edgeskd.quantize.sensitivity import search_fp32_fallback

    path, val, calib, cache = setup
    with pytest.raises(UsageError, match="not a node"):
        quantize_qdq(path, path.with_name("x.onnx"), META, calib=calib, cache=cache, fp32_nodes=["nope"])
    assert not path.with_name("x.onnx").exists()
    with pytest.raises(UsageError, match="mode"):
        search_fp32_fallback(path, META, val, cache=cache, calib=calib, mode="random")
    # a budget that ends during the ranking: stops, says so, and reports no pass it did not see
    res = search_fp32_fallback(path, META, val, cache=cache, calib=calib, time_budget_s=1e-3)
    assert res.stopped.startswith("time budget") and not res.passed
