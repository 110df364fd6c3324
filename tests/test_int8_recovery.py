"""build-engine's INT8 path: PTQ recovery kicks in on its own when INT8 fails the gate (the
deliberately sensitive layer stays FP32 in the TensorRT Q/DQ ONNX and the CPU artifact, with what it
costs and saves in the report); when PTQ cannot pass, the error names the exact `edgeskd qat`
command; a Q/DQ ONNX from `edgeskd qat` builds without calibrating again and is refused for fp16;
per-subclass INT8-vs-FP32 figures in build-engine's report and in bench."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from test_quant import bright_set
from test_sensitivity import META, sensitive_onnx

from edgeskd.engine.build import build_engine
from edgeskd.errors import AccuracyGateError
from edgeskd.quantize.qdq import inspect_qdq


def both_in_val(ls):
    """``ls`` with half its rows (both classes) in the validation split."""
    return dataclasses.replace(ls, splits=np.where(np.arange(len(ls)) % 4 >= 2, "val", "train"))


def test_recovery_keeps_the_sensitive_layer_in_fp32(tmp_path):
    path = sensitive_onnx(tmp_path / "sensitive.onnx")
    ls = both_in_val(bright_set(200, seed=3))
    rep = build_engine(path, backend="onnxruntime", dataset=ls, calib_dir=tmp_path / "c", threads=1,
                       time_seconds=0.1, recovery_budget_s=300)
    plan = rep.int8_plan
    # the method asked for (minmax) passes where ORT's int8 kernels are exact (VNNI); without VNNI their
    # u8 x s8 products can saturate (DESIGN §4) and recovery may move on to another calibration
    assert plan["passed"] and plan["recovered"] and plan["method"] in ("minmax", "entropy", "percentile")
    assert plan["fp32_nodes"] == ["mid"]
    first = plan["searches"][0]["trials"][0]
    assert first["fp32_nodes"] == [] and first["f1_drop"] > 50                       # plain PTQ failed
    (cost,) = plan["layer_costs"]
    assert cost["node"] == "mid" and cost["f1_saved"] > 50 and cost["weights"] == 4
    # bytes: with 'mid' FP32 vs all INT8 (4 weights: its Q/DQ nodes weigh more than the weights saved)
    assert cost["extra_bytes"] == plan["sizes"]["planned"] - plan["sizes"]["int8"] != 0
    assert plan["sizes"]["fp32"] > 0
    assert any("FP32 mid (Conv" in line and "saves" in line for line in plan["summary"])
    # the same layer list built the TensorRT input and the CPU variants
    qdq = tmp_path / "sensitive.int8.qdq.onnx"
    assert qdq in rep.extra_artifacts and inspect_qdq(qdq).fp32_layers == ["mid"] and inspect_qdq(qdq).problems() == []
    int8 = [c for c in rep.candidates if c.precision == "int8"]
    assert {c.name for c in int8} == {"s8s8", "u8s8"} and all(c.fp32_layers == ["mid"] and c.passed for c in int8)
    # per-subclass figures: the FP32 reference, every candidate, and the change
    assert set(rep.fp32_per_subclass) == {"dark", "bright"} and sum(rep.subclass_counts.values()) == len(ls.split("val"))
    assert set(rep.per_subclass_change()["s8s8"]) == {"dark", "bright"}
    saved = json.loads(rep.artifact.with_name(rep.artifact.name + ".json").read_text())
    assert saved["int8_plan"]["fp32_nodes"] == ["mid"] and "s8s8" in saved["per_subclass_change"]
    assert saved["fp32_per_subclass"] == rep.fp32_per_subclass


def test_ptq_that_cannot_pass_names_the_qat_command(tmp_path, cli):
    path = sensitive_onnx(tmp_path / "sensitive.onnx")
    ckpt = tmp_path / "run" / "student-skd.pt"                   # what `edgeskd export` records
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    extra = json.loads(props.get("edgeskd.extra", "{}"))
    onnx.helper.set_model_props(m, {**props, "edgeskd.extra": json.dumps({**extra, "checkpoint": str(ckpt)})})
    onnx.save(m, str(path))
    ls = bright_set(200, seed=3)
    with pytest.raises(AccuracyGateError) as e:
        build_engine(path, backend="onnxruntime", dataset=ls, calib_dir=tmp_path / "c", threads=1, time_seconds=0.1,
                     max_fp32_layers=0)
    msg = str(e.value)
    assert f"`edgeskd qat {ckpt} --out {tmp_path / 'sensitive.qat.onnx'}`" in msg
    assert f"`edgeskd build-engine {tmp_path / 'sensitive.qat.onnx'}`" in msg
    assert "minmax, entropy, percentile" in msg and "\n" not in msg
    assert sorted(p.name for p in tmp_path.glob("*onnx*")) == ["sensitive.onnx"]
    # --no-recovery: plain PTQ only, and the error says recovery was off
    with pytest.raises(AccuracyGateError, match="--no-recovery.*edgeskd qat") as e:
        build_engine(path, backend="onnxruntime", dataset=ls, calib_dir=tmp_path / "c", threads=1, time_seconds=0.1,
                     recovery=False)
    assert "calibrations tried" not in str(e.value)
    r = cli("build-engine", path, "--recovery-budget", "0")
    assert r.exit_code == 2 and "--recovery-budget" in r.output and "Traceback" not in r.output


@pytest.fixture(scope="module")
def qat_onnx(tmp_path_factory):
    from test_qat import tiny_run
    from typer.testing import CliRunner

    from edgeskd.cli.app import app

    tmp = tmp_path_factory.mktemp("qat")
    run, data = tiny_run(tmp)
    out = tmp / "student-skd.qat.onnx"
    r = CliRunner().invoke(app, ["qat", str(run / "student-skd.pt"), "--epochs", "1", "--calib-size", "24",
                                 "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, data


def test_build_engine_takes_a_qat_onnx_without_calibration(qat_onnx, tmp_path, cli):
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    src, data = qat_onnx
    out = tmp_path / "student.int8.cpu.onnx"
    rep = build_engine(src, backend="onnxruntime", out=out, calib_dir=tmp_path / "calib", threads=1, time_seconds=0.1,
                       max_f1_drop=100)
    assert not (tmp_path / "calib").exists() and rep.source == "qdq" and rep.calibration.startswith("none")
    assert rep.int8_plan == {} and rep.extra_artifacts == []
    qat = OnnxRuntimeRunner(src).meta.extra["quant"]["qat"]
    recorded = qat["reference"]
    assert qat["range_init"] in ("max", "entropy") and qat["checkpoint"].endswith("student-skd.pt")
    assert qat["source_model"] == "student-skd"
    assert rep.fp32_f1 == recorded["f1"] and rep.fp32_per_subclass == recorded["per_subclass"]
    names = {c.name: c for c in rep.candidates}
    assert set(names) == {"fp32", "qat-s8s8", "fp32-noqdq"} and names["fp32"].note == "reference"
    assert set(rep.per_subclass_change()) == {"qat-s8s8", "fp32-noqdq"}
    winner = onnx.load(str(rep.artifact))
    kinds = {n.op_type for n in winner.graph.node}
    assert ("QuantizeLinear" in kinds) == (rep.winner == "qat-s8s8")
    assert rep.winner == "qat-s8s8" or any("TensorRT input is the Q/DQ ONNX given" in n for n in rep.notes)
    # the Q/DQ-free model: no Q/DQ node left, the same classes as the Q/DQ model on most images
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    plain = tmp_path / "plain.onnx"
    from edgeskd.quantize.qdq_source import fp32_from_qdq

    fp32_from_qdq(src, OnnxRuntimeRunner(src).meta, plain)
    assert not {n.op_type for n in onnx.load(str(plain)).graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    a, b = OnnxRuntimeRunner(src).infer(x), OnnxRuntimeRunner(plain).infer(x)
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.75
    # refused for fp16 / fp32 with one line; refused on other validation data than it recorded
    for precision in ("fp16", "fp32"):
        r = cli("build-engine", src, "--precision", precision, "--backend", "onnxruntime")
        assert r.exit_code == 2 and "--precision int8" in r.output and len(r.output.strip().splitlines()) == 1
    from test_export import tiny_set

    from edgeskd.data.writers import write_dataset

    other = write_dataset(tiny_set(60, seed=9), tmp_path / "other", "folder")
    r = cli("build-engine", src, "--backend", "onnxruntime", "--data", other)
    assert r.exit_code == 3 and "other validation images" in r.output and "Traceback" not in r.output


def test_bench_reports_int8_vs_fp32_per_subclass():
    from edgeskd.bench.measure import Row, add_comparisons
    from edgeskd.bench.report import markdown

    fp32 = Row("s.onnx", "s.onnx", "onnxruntime", "fp32", f1=90.0, model_name="student-skd",
               per_subclass_accuracy={"a": 95.0, "b": 80.0})
    q = Row("s.int8.onnx", "s.int8.onnx", "onnxruntime", "int8", f1=89.5, model_name="student-skd",
            per_subclass_accuracy={"a": 96.0, "b": 72.5})
    # a QAT model and its Q/DQ-free copy compare with the FP32 student they came from
    qat = Row("s.qat.onnx", "s.qat.onnx", "onnxruntime", "int8", f1=89.0, model_name="student-skd-qat",
              fp32_source_model="student-skd", per_subclass_accuracy={"a": 95.0, "b": 78.0})
    plain = Row("s.qat.fp32.cpu.onnx", "p", "onnxruntime", "fp32", f1=91.0, model_name="student-skd-qat",
                fp32_source_model="student-skd", per_subclass_accuracy={"a": 95.0, "b": 80.0})
    add_comparisons([fp32, q, plain, qat], None)
    assert q.f1_change_vs_fp32 == -0.5 and q.subclass_change_vs_fp32 == {"a": 1.0, "b": -7.5}
    assert q.worst_subclass_change == {"subclass": "b", "change": -7.5} and fp32.worst_subclass_change is None
    assert qat.f1_change_vs_fp32 == -1.0 and qat.worst_subclass_change == {"subclass": "b", "change": -2.0}
    assert plain.f1_change_vs_fp32 == 1.0
    md = markdown({"machine": {}, "rows": [fp32.to_dict(), q.to_dict()]})
    assert "b -7.5" in md and "| b | 72.5 (-7.5) |" in md


def test_the_calibration_cache_key_follows_the_images_bytes(tmp_path):
    """Images rewritten in place (same names) must not reuse ranges calibrated on the old ones."""
    from PIL import Image

    from edgeskd.data import load_dataset
    from edgeskd.quantize.calibration import CalibrationSet
    from helpers_stream import META

    rows = ["path,class,subclass,split"]
    for i in range(8):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{('hyperplastic', 'adenoma')[i % 2]},{('hp_a', 'ad_a')[i % 2]},train")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ls = load_dataset(tmp_path / "m.csv")
    calib = CalibrationSet(ls, META, np.arange(len(ls)), "train")
    before, by_path = calib.fingerprint(contents=True), calib.fingerprint()
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "3.png")
    assert calib.fingerprint(contents=True) != before and calib.fingerprint() == by_path
