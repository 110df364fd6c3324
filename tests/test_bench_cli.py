"""`edgeskd bench` through the CLI on a tiny generated data set and tiny models."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from edgeskd.data.synthetic import make_synthetic  # noqa: E402
from edgeskd.data.writers import write_dataset  # noqa: E402
from edgeskd.meta import ModelMeta  # noqa: E402
from edgeskd.models import create_model  # noqa: E402
from edgeskd.models.checkpoint import save_checkpoint  # noqa: E402


@pytest.fixture
def tiny(tmp_path):
    ls = make_synthetic(60, 32, seed=0)
    data = write_dataset(ls, tmp_path / "data", "folder")
    run = tmp_path / "run"
    run.mkdir()
    for name, output in [("teacher", "subclass_logits"), ("student-skd", "subclass_logits")]:
        meta = ModelMeta(class_names=ls.class_names, subclass_names=ls.subclass_names,
                         subclass_to_class=ls.subclass_to_class, input_size=(32, 32), output=output,
                         arch="tiny_cnn", model_name=name)
        save_checkpoint(run / f"{name}.pt", create_model("tiny_cnn", meta.num_outputs).eval(), meta)
    (run / "metrics.json").write_text("{}")
    return data, run


ROW_SCHEMA = {"name", "path", "backend", "precision", "size_mb", "params", "f1", "accuracy", "auc",
              "latency_p50_ms", "latency_p99_ms", "throughput", "peak_mem_mb", "speedup_vs_torch_student",
              "f1_change_vs_fp32", "status", "error"}


def test_bench_cli_json_schema_and_plot(cli, tiny, tmp_path):
    data, run = tiny
    out, png = tmp_path / "b" / "bench.json", tmp_path / "b" / "bench.png"
    r = cli("bench", run, "--data", data, "--batch-sizes", "1,2", "--warmup", "1", "--iters", "3",
            "--threads", "1", "--out", out, "--plot", png, "--markdown")
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert {"cpu", "cores", "threads", "libraries", "gemm_peak_gflops"} <= set(res["machine"])
    peaks = res["machine"]["gemm_peaks_gflops"]   # numpy's BLAS and ONNX Runtime's MLAS, the best is the roofline
    assert set(peaks) == {"numpy", "onnxruntime"} and res["machine"]["gemm_peak_gflops"] == max(peaks.values()) > 0
    assert [row["name"] for row in res["rows"]] == ["teacher", "student-skd"]
    for row in res["rows"]:
        assert ROW_SCHEMA <= set(row) and row["status"] == "ok"
        assert set(row["throughput"]) == {"1", "2"}
        assert 0 <= row["f1"] <= 100
    assert png.stat().st_size > 1000
    assert "| name |" in r.output


def test_bench_cli_failing_artifact_exit_code(cli, tiny, tmp_path):
    data, run = tiny
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    out = tmp_path / "bench.json"
    r = cli("bench", bad, run / "student-skd.pt", "--data", data, "--batch-sizes", "1", "--warmup", "0",
            "--iters", "2", "--threads", "1", "--out", out)
    assert r.exit_code == 1
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["status"] == "failed" and rows[1]["status"] == "ok"


@pytest.mark.parametrize("args,msg", [(["--batch-sizes", "1,0"], "positive"), (["--batch-sizes", "a"], "integers"),
                                      (["--split", "dev"], "--split")])
def test_bench_cli_bad_options(cli, tiny, args, msg):
    data, run = tiny
    r = cli("bench", run, "--data", data, *args)
    assert r.exit_code != 0 and msg in r.output
    assert "Traceback" not in r.output


def test_bench_warns_when_artifacts_come_from_different_data(cli, tiny, tmp_path):
    """Every row is scored on one data set: artifacts trained on different ones are named in a warning."""
    from edgeskd.data.artifact_data import data_refs

    data, run = tiny
    ls = make_synthetic(60, 32, seed=0)
    meta = ModelMeta(class_names=ls.class_names, subclass_names=ls.subclass_names,
                     subclass_to_class=ls.subclass_to_class, input_size=(32, 32), output="subclass_logits",
                     arch="tiny_cnn", model_name="student-skd")
    model = create_model("tiny_cnn", meta.num_outputs).eval()

    def ckpt(name, **train):
        p = tmp_path / "cks" / name
        p.parent.mkdir(exist_ok=True)
        save_checkpoint(p, model, meta, config={"train": {"format": "auto", "data_seed": 0, **train}})
        return p

    a = ckpt("a.pt", data=str(data), img_size=32)
    b = ckpt("b.pt", data=str(data), img_size=48)           # the same real data at another size: the same
    c = ckpt("c.pt", data=None, synthetic_n=60, img_size=32)
    d = ckpt("d.pt", data=None, synthetic_n=60, img_size=48)  # synthetic, rendered at another size: different
    assert len(data_refs([a, b])) == 1
    assert len(data_refs([c, d])) == 2
    r = cli("bench", a, c, "--batch-sizes", "1", "--warmup", "0", "--iters", "2", "--threads", "1",
            "--out", tmp_path / "bench.json")
    assert "2 different data sets" in r.output and str(data) in r.output
    r = cli("bench", a, c, "--data", data, "--batch-sizes", "1", "--warmup", "0", "--iters", "2", "--threads", "1",
            "--out", tmp_path / "bench2.json")
    assert r.exit_code == 0 and "different data sets" not in r.output


def _labelled_video(tmp_path):
    from helpers_stream import make_video

    video = make_video(tmp_path / "v.mp4", n=24, w=96, h=64)
    labels = tmp_path / "v.labels.csv"
    rows = ["frame,class,subclass,polyp_id"] + [
        f"{i},{'hyperplastic' if i < 12 else 'adenoma'},{'hp_nodular' if i < 12 else 'ad_tubular'},{i // 12}"
        for i in range(24)]
    labels.write_text("\n".join(rows) + "\n")
    return video, labels


def test_bench_video_rows_are_the_stream_figures(cli, tiny, tmp_path, monkeypatch):
    pytest.importorskip("av")
    import edgeskd.stream.pipeline as pipeline

    data, run = tiny
    video, labels = _labelled_video(tmp_path)
    out, stats = tmp_path / "b.json", tmp_path / "s.json"
    devices = []
    real = pipeline.load_stream_runner
    monkeypatch.setattr(pipeline, "load_stream_runner", lambda e, t, d=None: devices.append(d) or real(e, t, d))
    r = cli("bench", run / "student-skd.pt", "--data", data, "--batch-sizes", "1", "--warmup", "1", "--iters", "2",
            "--video", video, "--labels", labels, "--out", out)
    assert r.exit_code == 0, r.output
    assert "NPV % of calls" in r.output and "frame acc %" in r.output   # the video table
    block = json.loads(out.read_text())["video"]
    (row,) = block["rows"]
    assert row["status"] == "ok" and row["n_polyps"] == 2 and "false alarm" in block["episode_rule"]
    assert devices == ["cpu"]   # the video rows run where the image rows ran (--device, default cpu)
    # the same artifact through `stream --labels`: the same figures
    r = cli("stream", video, "--engine", run / "student-skd.pt", "--labels", labels, "--stats", stats)
    assert r.exit_code == 0, r.output
    vid = json.loads(stats.read_text())["labels"]["video"]
    assert row["frame_accuracy"] == pytest.approx(100 * vid["polyp_frames"]["accuracy"], abs=0.01)
    assert row["negative_polyps_called"] == (f"{vid['negative_polyps_called']['with_negative_call']}/"
                                             f"{vid['negative_polyps_called']['n_polyps']}")


def test_bench_video_inputs_are_checked_before_any_work(cli, tiny, tmp_path):
    pytest.importorskip("av")
    data, run = tiny
    video, labels = _labelled_video(tmp_path)
    out = tmp_path / "b.json"
    for args, msg in [(["--video", video], "go together"), (["--labels", labels], "go together"),
                      (["--video", video, "--labels", tmp_path / "none.csv"], "not found"),
                      (["--video", tmp_path / "none.mp4", "--labels", labels], "not found")]:
        r = cli("bench", run, "--data", data, "--out", out, *args)
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output, r.output
        assert not out.exists()


def test_bench_refuses_output_names_of_another_type_up_front(cli, tiny, tmp_path):
    """`--out` is JSON and `--plot` PNG: another suffix is one line before any measuring, nothing written."""
    data, run = tiny
    for args, opt in ((["--out", tmp_path / "b.txt"], "--out"),
                      (["--out", tmp_path / "b.json", "--plot", tmp_path / "p.txt"], "--plot")):
        r = cli("bench", run, "--data", data, *args)
        assert r.exit_code == 2 and opt in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]   # the fixture's folders only
