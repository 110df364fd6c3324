"""Calibration, Q/DQ structure, the INT8 accuracy gate (pass and fail), build-engine bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeskd.data.base import LabeledSet
from edgeskd.errors import AccuracyGateError, DataError
from edgeskd.meta import ModelMeta
from edgeskd.engine.build import build_engine
from edgeskd.quantize.calibration import select_calibration, stratified_indices
from edgeskd.quantize.qdq import inspect_qdq

META = ModelMeta(class_names=["dark", "bright"], subclass_names=["dark", "bright"], subclass_to_class=[0, 1],
                 input_size=(16, 16), output="class_logits", arch="handmade", model_name="bright")


def brightness_onnx(path):
    """Conv1x1 → ReLU → GAP → Gemm (no bias): channel 0 measures brightness (≈3.5 bright, ≈0.9 dark),
    channel 1 is a constant reference (2.2). FP32 separates the classes perfectly; INT8 does too,
    unless the activation range is calibrated on dark images only: bright activations then
    saturate at the reference level and read as dark."""
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[0] = 1.0 / 3
    w[1] = 1e-3
    b = np.array([2.0, 2.2], np.float32)
    fc = np.array([[0, 2.1], [2.0, 0]], np.float32)     # rows: dark, bright
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
         helper.make_node("Flatten", ["p"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "fc"], ["class_logits"], transB=1, name="head")],
        "bright", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, META.to_props())
    onnx.save(m, str(path))
    return path


def bright_set(n=160, seed=0, only_dark=False):
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, int) if only_dark else (np.arange(n) % 2)
    level = np.where(labels == 1, 200, 50)
    imgs = np.clip(level[:, None, None, None] + rng.normal(0, 20, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    splits = np.where(np.arange(n) % 4 == 3, "val", "train")
    return LabeledSet("bright", "synthetic", ["dark", "bright"], ["dark", "bright"], [0, 1], labels, labels, splits,
                      images=imgs)


def test_stratified_calibration_pick():
    strata = np.repeat([0, 1, 2, 3], [400, 200, 100, 20])
    idx = stratified_indices(strata, 72, seed=1)
    assert len(idx) == 72 and len(set(idx)) == 72
    counts = np.bincount(strata[idx], minlength=4)
    assert counts[3] >= 1 and abs(counts[0] - 40) <= 1 and abs(counts[1] - 20) <= 1
    assert np.array_equal(idx, stratified_indices(strata, 72, seed=1))          # seeded
    assert not np.array_equal(idx, stratified_indices(strata, 72, seed=2))


def test_calibration_size_checks():
    ls = bright_set(40)
    cs = select_calibration(ls, META, size=512, batch_size=8)
    assert len(cs) == 30 and cs.warnings and "fewer" not in cs.warnings[0]
    assert "< 300" in cs.warnings[0]
    x = np.concatenate(list(cs.batches()))
    assert x.shape == (30, 3, 16, 16) and x.dtype == np.float32
    with pytest.raises(DataError, match="fewer than one batch"):
        select_calibration(ls, META, size=4, batch_size=8)
    with pytest.raises(DataError, match="empty"):
        select_calibration(ls.subset(np.zeros(len(ls), bool)), META, size=10, batch_size=8)


def test_qdq_structure_of_tiny_cnn(tmp_path):
    """S8S8 Q/DQ of a real student: symmetric (zero points 0), per-channel weights on axis 0,
    per-tensor activations, no int32 bias DQ, every Conv quantized; U8S8 is flagged as not TRT."""
    from test_export import make_checkpoint, tiny_set

    from edgeskd.export.onnx_export import export_onnx
    from edgeskd.quantize.calibration import cache_path
    from edgeskd.quantize.qdq import quantize_qdq

    ckpt, _ = make_checkpoint(tmp_path / "s.pt")
    ls = tiny_set(90)
    res = export_onnx(ckpt, tmp_path / "s.onnx", dataset=ls, parity_samples=8)
    cs = select_calibration(ls, res.meta, size=30, batch_size=10)
    cache = cache_path(res.path.read_bytes(), cs, "minmax", directory=tmp_path / "calib")
    q = quantize_qdq(res.path, tmp_path / "s.int8.qdq.onnx", res.meta, calib=cs, cache=cache)
    rep = inspect_qdq(q)
    assert rep.problems() == [] and rep.tensorrt_ok
    assert rep.quantized_convs == sum(n.op_type == "Conv" for n in onnx.load(str(q)).graph.node) >= 5  # every conv
    m = onnx.load(str(q))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any()
    assert ModelMeta.from_props({p.key: p.value for p in m.metadata_props}).precision == "int8"
    # without the precision key, the runtime reads it off the graph
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    kept = [p for p in m.metadata_props if p.key != "edgeskd.precision"]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    assert OnnxRuntimeRunner(m.SerializeToString()).meta.precision == "int8"
    assert q.stat().st_size < 0.30 * res.path.stat().st_size
    # the quantization itself tracks FP32 closely: the Q/DQ graph run as written (DQ → float op → Q);
    # ORT's fused int8 kernels differ by CPU (without VNNI, VPMADDUBSW can saturate: DESIGN §4), and
    # their accuracy is what build-engine's gate measures on each machine
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    x = np.concatenate(list(cs.batches()))
    ref = OnnxRuntimeRunner(res.path).infer(x)
    err = np.abs(OnnxRuntimeRunner(q, optimization="disable").infer(x) - ref).max()
    assert err < 0.05 * np.abs(ref).max(), (err, np.abs(ref).max())
    u8 = quantize_qdq(res.path, tmp_path / "u8.onnx", res.meta, calib=None, cache=cache, variant="u8s8")
    probs = inspect_qdq(u8).problems()
    assert any("zero points" in p for p in probs) and any("uint8" in p for p in probs)
    # the float-weight form keeps Q→DQ pairs on weights and is still TensorRT-shaped
    pair = quantize_qdq(res.path, tmp_path / "pair.onnx", res.meta, calib=None, cache=cache, weight_qdq_pair=True)
    assert inspect_qdq(pair).problems() == [] and pair.stat().st_size > res.path.stat().st_size * 0.9


def test_int8_gate_passes_and_caches_calibration(tmp_path):
    onnx_path = brightness_onnx(tmp_path / "bright.onnx")
    ls = bright_set()
    logs: list[str] = []
    rep = build_engine(onnx_path, backend="onnxruntime", dataset=ls, calib_dir=tmp_path / "calib", threads=1,
                       time_seconds=0.2, log=logs.append)
    assert rep.fp32_f1 == 100.0
    names = [c.name for c in rep.candidates]
    assert names[0] == "fp32" and {"s8s8", "u8s8", "fp32-opt"} <= set(names)
    assert all(c.passed for c in rep.candidates) and rep.winner in names and rep.reason
    assert rep.artifact.is_file() and (tmp_path / "bright.int8.qdq.onnx").is_file()
    assert json.loads(rep.artifact.with_name(rep.artifact.name + ".json").read_text())["winner"] == rep.winner
    caches = list((tmp_path / "calib").glob("*.json"))
    assert len(caches) == 1 and "120 images of bright train" in rep.calibration
    from edgeskd.runtime.loader import load_runner

    with load_runner(tmp_path / "bright.int8.qdq.onnx") as r:
        assert r.metadata.precision == "int8"
    # a rebuild reuses the calibrated ranges
    rep2 = build_engine(onnx_path, backend="onnxruntime", dataset=ls, calib_dir=tmp_path / "calib", threads=1,
                        time_seconds=0.2)
    assert "cached ranges" in rep2.calibration and len(list((tmp_path / "calib").glob("*.json"))) == 1
    # ranges from 120 images (< 300): the rebuild says so too, as the first build did
    assert any("only 120 images" in w for w in rep.warnings) and rep2.warnings == rep.warnings


def test_int8_gate_fails_leaves_nothing_unless_forced(tmp_path, cli):
    onnx_path = brightness_onnx(tmp_path / "bright.onnx")
    ls, dark = bright_set(), bright_set(120, seed=5, only_dark=True)
    with pytest.raises(AccuracyGateError, match="drop .* > --max-f1-drop 1"):
        build_engine(onnx_path, backend="onnxruntime", dataset=ls, calib_dataset=dark, calib_dir=tmp_path / "c",
                     threads=1, time_seconds=0.1)
    assert sorted(p.name for p in tmp_path.glob("*onnx*")) == ["bright.onnx"]
    rep = build_engine(onnx_path, backend="onnxruntime", dataset=ls, calib_dataset=dark, calib_dir=tmp_path / "c",
                       threads=1, time_seconds=0.1, force=True)
    assert rep.artifact.is_file() and any("--force" in w for w in rep.warnings)
    assert all(not c.passed for c in rep.candidates if c.precision == "int8")


def test_build_engine_cli_bad_input(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from test_runtime import make_onnx

    foreign = tmp_path / "foreign.onnx"
    onnx.save(make_onnx(k=2, out_name="logits"), foreign)
    r = cli("build-engine", foreign, "--backend", "onnxruntime")
    assert r.exit_code == 4 and "class_names" in r.output and "--classes" in r.output
    r = cli("build-engine", tmp_path / "nope.onnx")
    assert r.exit_code == 4 and "does not exist" in r.output
    ok = brightness_onnx(tmp_path / "bright.onnx")
    r = cli("build-engine", ok, "--backend", "tensorrt")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert r.exit_code == 5 and "TensorRT is not installed" in r.output
    r = cli("build-engine", ok, "--max-f1-drop", "-1")
    assert r.exit_code == 2
    r = cli("build-engine", ok, "--input-size", "abc")
    assert r.exit_code == 2 and "--input-size" in r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["bright.onnx", "foreign.onnx"]


def _write_folder_tree(root, ls):
    from PIL import Image

    for i in range(len(ls)):
        d = root / ls.splits[i] / ls.class_names[ls.labels[i]] / ls.subclass_names[ls.subclasses[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ls.images[i]).save(d / f"{i:04d}.png")
    return root


def test_build_engine_cli_end_to_end(tmp_path, cli, monkeypatch):
    """build-engine from the command line on a folder-tree data set: table, winner, artifacts, JSON."""
    monkeypatch.chdir(tmp_path)   # the default calibration/ is relative to the working directory
    onnx_path = brightness_onnx(tmp_path / "bright.onnx")
    ls = bright_set(96)
    ls.splits = np.where(np.arange(96) % 4 == 3, "val", np.where(np.arange(96) % 4 == 2, "test", "train"))
    data = _write_folder_tree(tmp_path / "data", ls)
    r = cli("build-engine", onnx_path, "--backend", "onnxruntime", "--data", data, "--threads", "1",
            "--calib-size", "40")
    assert r.exit_code == 0, r.output
    assert "winner:" in r.output and "s8s8" in r.output and "u8s8" in r.output and "< 300" in r.output
    assert (tmp_path / "bright.int8.qdq.onnx").is_file()
    written = [p for p in tmp_path.glob("bright.*.cpu.onnx")]
    assert len(written) == 1
    r = cli("build-engine", onnx_path, "--backend", "onnxruntime", "--data", data, "--threads", "1",
            "--calib-size", "40", "--json")
    assert r.exit_code == 2 and "--overwrite" in r.output   # the artifacts exist: refused, untouched
    r = cli("build-engine", onnx_path, "--backend", "onnxruntime", "--data", data, "--threads", "1",
            "--calib-size", "40", "--json", "--overwrite")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    assert len(list((tmp_path / "calibration").glob("bright-*.json"))) == 1
    assert "cached ranges" in rep["calibration"] and rep["winner"] in {c["name"] for c in rep["candidates"]}


def test_quantizer_needs_onnxruntime_with_calibration_cache():
    from edgeskd.errors import BackendUnavailable
    from edgeskd.quantize.qdq import check_quantizer_version

    for old in ("1.17.3", "1.26.0"):
        with pytest.raises(BackendUnavailable, match=r"onnxruntime >= 1\.27.*this is " + old):
            check_quantizer_version(old)
    for ok in ("1.27.0", "1.32.0", "2.0.0", "1.33.0+cu130"):
        check_quantizer_version(ok)
    check_quantizer_version()   # the installed one (pyproject's train extra asks for >= 1.27)


def test_winner_is_the_fastest_unless_a_speed_tie_has_better_f1():
    from edgeskd.engine.report import LATENCY_TIE, Candidate, pick_winner

    def c(name, p50, f1, size=100):
        return Candidate(name, "int8" if name != "fp32-opt" else "fp32", "", size_bytes=size, p50_ms=p50, f1=f1,
                         passed=True)

    fp32opt, u8, s8 = c("fp32-opt", 0.097, 79.22, 720), c("u8s8", 0.095, 78.71, 211), c("s8s8", 0.142, 79.22, 211)
    # 0.095 vs 0.097 ms is a tie: the better F1 wins, not the timing noise
    assert pick_winner([fp32opt, u8, s8]) == (fp32opt, u8)
    # a clear speed gap wins over F1
    fast = c("u8s8", 0.097 / (1 + 2 * LATENCY_TIE), 78.71, 211)
    assert pick_winner([fp32opt, fast, s8]) == (fast, fast)
    # tied on speed and F1: the smaller file
    big, small = c("fp32-opt", 0.095, 79.22, 720), c("u8s8", 0.097, 79.22, 211)
    assert pick_winner([big, small]) == (small, big)


def test_build_engine_with_out_elsewhere_writes_nothing_beside_its_input(tmp_path, cli, monkeypatch):
    """Everything build-engine writes goes to --out's folder (and the calibration cache folder): the
    input's folder is left as it was."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "models"
    src.mkdir()
    onnx_path = brightness_onnx(src / "bright.onnx")
    ls = bright_set(96)
    ls.splits = np.where(np.arange(96) % 4 == 3, "val", np.where(np.arange(96) % 4 == 2, "test", "train"))
    data = _write_folder_tree(tmp_path / "data", ls)
    before = sorted(p.name for p in src.iterdir())
    out = tmp_path / "elsewhere" / "bright.int8.cpu.onnx"
    r = cli("build-engine", onnx_path, "--backend", "onnxruntime", "--data", data, "--calib-size", "40", "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in src.iterdir()) == before == ["bright.onnx"]
    written = sorted(p.name for p in out.parent.iterdir())
    assert "bright.int8.qdq.onnx" in written and "bright.int8.cpu.onnx.json" in written and out.is_file()
