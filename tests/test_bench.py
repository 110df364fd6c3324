"""Bench rows for each artifact kind on tiny generated models and data, the JSON schema, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edgeskd.bench.discover import Artifact, discover  # noqa: E402
from edgeskd.bench.measure import ROW_KEYS, BenchOptions, add_comparisons, bench_artifact, run_bench  # noqa: E402
from edgeskd.data.base import LabeledSet  # noqa: E402
from edgeskd.meta import ModelMeta  # noqa: E402
from edgeskd.models import create_model  # noqa: E402
from edgeskd.models.checkpoint import save_checkpoint  # noqa: E402

SIZE = 32
CLASSES = ["hyperplastic", "adenoma"]
SUBS = ["hp-a", "hp-b", "ad-a", "ad-b", "ad-c"]
S2C = [0, 0, 1, 1, 1]


def _data(n=24, seed=0, classes=CLASSES):
    rng = np.random.default_rng(seed)
    subs = rng.integers(0, len(SUBS), n)
    labels = np.asarray(S2C)[subs]
    imgs = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    imgs[labels == 1, :, :, 0] = 255  # learnable-ish signal; content does not matter here
    return LabeledSet(name="tiny", format="synthetic", class_names=list(classes), subclass_names=SUBS,
                      subclass_to_class=S2C, labels=labels, subclasses=subs, splits=np.array(["test"] * n),
                      images=imgs)


def _meta(name, output):
    return ModelMeta(class_names=CLASSES, subclass_names=SUBS, subclass_to_class=S2C, input_size=(SIZE, SIZE),
                     output=output, arch="tiny_cnn", model_name=name)


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    for name, output in [("teacher", "subclass_logits"), ("student-none", "class_logits"),
                         ("student-skd", "subclass_logits")]:
        meta = _meta(name, output)
        save_checkpoint(run / f"{name}.pt", create_model("tiny_cnn", meta.num_outputs).eval(), meta,
                        config={"synthetic_n": 24})
    (run / "metrics.json").write_text("{}")
    return run


def _onnx(tmp_path, run, name="student-skd"):
    from edgeskd.models.checkpoint import model_from_checkpoint

    model, meta, _ = model_from_checkpoint(run / f"{name}.pt")
    out = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(out), input_names=["input"],
                      output_names=[meta.output], dynamic_axes={"input": {0: "N"}, meta.output: {0: "N"}},
                      opset_version=17, dynamo=False)
    m = onnx.load(str(out))
    for k, v in meta.to_props().items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(out))
    return out


OPTS = BenchOptions(batch_sizes=(1, 4), threads=1, warmup=1, iters=3)


def test_discover_run_dir_and_files(tmp_path):
    run = _run_dir(tmp_path)
    onnx_path = _onnx(tmp_path, run)
    (tmp_path / "notes.txt").write_text("x")
    arts = discover([run, onnx_path, tmp_path / "notes.txt", tmp_path / "missing.onnx"])
    names = [a.name for a in arts]
    assert names[:3] == ["teacher", "student-none", "student-skd"]
    assert names[3] == "student-skd" and arts[3].path == onnx_path
    assert "unknown artifact kind" in arts[4].error
    assert "does not exist" in arts[5].error


def test_rows_for_checkpoint_and_onnx_agree(tmp_path):
    run = _run_dir(tmp_path)
    onnx_path = _onnx(tmp_path, run)
    ls = _data()
    arts = [Artifact("student-skd", run / "student-skd.pt"), Artifact("student-skd", onnx_path)]
    result = run_bench(arts, ls, OPTS, machine={"gemm_peak_gflops": 10.0})
    t, o = result["rows"]
    assert set(t) == set(ROW_KEYS)
    assert t["status"] == o["status"] == "ok", (t["error"], o["error"])
    assert t["backend"] == "torch" and o["backend"] == "onnxruntime"
    assert t["f1"] == pytest.approx(o["f1"], abs=1e-6)  # same model, same preprocessing, same metric
    assert t["params"] == sum(p.numel() for p in create_model("tiny_cnn", 5).parameters())
    # the ONNX holds BatchNorm folded into the convolutions: a few parameters fewer
    assert 0.95 * t["params"] < o["params"] < t["params"]
    # FLOPs: torch counter and ONNX graph count the same convolutions and matmul
    assert o["flops_per_image"] == pytest.approx(t["flops_per_image"], rel=0.02)
    assert set(o["throughput"]) == {"1", "4"} and all(v > 0 for v in o["throughput"].values())
    assert o["latency_p50_ms"] > 0 and o["latency_p99_ms"] >= o["latency_p50_ms"]
    assert o["f1_change_vs_fp32"] == pytest.approx(0.0, abs=1e-6)  # vs its torch source
    assert o["speedup_vs_torch_student"] > 0 and t["speedup_vs_torch_student"] == pytest.approx(1.0)
    assert o["gflops_achieved"] > 0 and o["pct_of_gemm_peak"] == pytest.approx(100 * o["gflops_achieved"] / 10.0, rel=1e-3)
    json.dumps(result)  # JSON-serialisable


def test_failing_artifacts_make_failed_rows_and_others_go_on(tmp_path):
    run = _run_dir(tmp_path)
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    ls_other = _data(classes=["normal", "polyp"])
    rows = run_bench([Artifact("broken", bad), Artifact("student-none", run / "student-none.pt")],
                     _data(), OPTS, machine={})["rows"]
    assert rows[0]["status"] == "failed" and rows[0]["error"]
    assert rows[1]["status"] == "ok"
    mismatch = bench_artifact(Artifact("student-none", run / "student-none.pt"), ls_other, OPTS)
    assert mismatch.status == "failed" and "do not match" in mismatch.error


def test_comparisons_pick_the_right_sources():
    from edgeskd.bench.measure import Row

    rows = [
        Row("student-skd", "a.pt", backend="torch", precision="fp32", model_name="student-skd", f1=80.0,
            latency_p50_ms=10.0),
        Row("student-skd", "a.onnx", backend="onnxruntime", precision="fp32", model_name="student-skd", f1=80.0,
            latency_p50_ms=2.0),
        Row("student-skd.int8", "a.int8.onnx", backend="onnxruntime", precision="int8", model_name="student-skd",
            f1=79.5, latency_p50_ms=1.0, flops_per_image=1e6, throughput={"1": 1000.0, "8": 2000.0}),
        Row("teacher", "t.pt", backend="torch", precision="fp32", model_name="teacher", f1=90.0, latency_p50_ms=40.0),
    ]
    add_comparisons(rows, gemm_peak_gflops=100.0)
    assert rows[1].speedup_vs_torch_student == 5.0 and rows[2].speedup_vs_torch_student == 10.0
    assert rows[3].speedup_vs_torch_student == 0.25  # the teacher vs the torch student
    assert rows[2].f1_change_vs_fp32 == -0.5 and rows[1].f1_change_vs_fp32 == 0.0
    assert rows[0].f1_change_vs_fp32 is None
    assert rows[2].gflops_achieved == 2.0 and rows[2].pct_of_gemm_peak == 2.0


def test_two_runs_of_one_model_name_are_compared_within_their_own_checkpoint():
    """Two runs' `student-skd`: the ONNX exported from run A is compared with run A's checkpoint (the
    lineage export records), not with whichever row carries the name last."""
    from edgeskd.bench.measure import Row

    rows = [
        Row("a", "runA/student-skd.pt", backend="torch", precision="fp32", model_name="student-skd", f1=71.0,
            latency_p50_ms=10.0, lineage="aaaa"),
        Row("b", "runB/student-skd.pt", backend="torch", precision="fp32", model_name="student-skd", f1=67.0,
            latency_p50_ms=5.0, lineage="bbbb"),
        Row("a.onnx", "a.onnx", backend="onnxruntime", precision="fp32", model_name="student-skd", f1=71.0,
            latency_p50_ms=2.0, lineage="aaaa"),
        Row("c.onnx", "c.onnx", backend="onnxruntime", precision="fp32", model_name="student-skd", f1=60.0,
            latency_p50_ms=2.0, lineage="cccc"),
    ]
    add_comparisons(rows, gemm_peak_gflops=None)
    assert rows[2].f1_change_vs_fp32 == 0.0 and rows[2].speedup_vs_torch_student == 5.0
    assert rows[3].f1_change_vs_fp32 is None   # its checkpoint is not in this bench: no comparison, not a wrong one


def test_bad_batch_sizes():
    from edgeskd.errors import UsageError

    with pytest.raises(UsageError):
        BenchOptions(batch_sizes=(1, 0))


def test_markdown_names_the_machine_and_the_caption_the_polyp_images():
    from edgeskd.bench.report import markdown

    res = {"machine": {"cpu": "AMD EPYC", "cpu_flags": ["avx2", "fma"], "threads": 1}, "rows": [], "split": "test",
           "n_images": 2595, "n_polyp_images": 1819}
    md = markdown(res)
    assert md.startswith("Measured on AMD EPYC (avx2 fma) · 1 threads.")
    assert "split test (n=2595); F1, acc, AUC, ECE, NPV and cover on its 1819 polyp images" in md


def test_bench_takes_the_models_classes_in_another_order_and_refuses_others():
    from edgeskd.bench.measure import _check_matches_data
    from edgeskd.data.base import LabeledSet
    from edgeskd.errors import ArtifactError
    from helpers_stream import META

    ls = LabeledSet("x", "manifest", ["adenoma", "hyperplastic"], ["a", "h"], [0, 1], np.array([0, 1, 1]),
                    np.array([0, 1, 1]), np.array(["test"] * 3), images=np.zeros((3, 2, 2, 3), np.uint8))
    got = _check_matches_data(META, ls)   # META: hyperplastic, adenoma
    assert got.class_names == ["hyperplastic", "adenoma"] and list(got.labels) == [1, 0, 0]
    with pytest.raises(ArtifactError, match="do not match"):
        _check_matches_data(META.replace(class_names=["cat", "dog"]), ls)
