"""Experiment tracking beside training: TensorBoard event files in OUT/tensorboard and an MLflow run
(params, per-epoch metrics, test figures, report artifacts) — and training that goes on when the
tracking server does not answer."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

TINY = ["--synthetic-n", "120", "--img-size", "32", "--teacher", "tiny_cnn", "--student", "tiny_cnn_050",
        "--batch-size", "32", "--epochs", "2", "--teacher-epochs", "1", "--students", "none,skd", "--device", "cpu"]


def test_tensorboard_and_mlflow_follow_a_run(cli, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # a file store keeps the test offline
    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "run"
    r = cli("train", *TINY, "--out", out, "--mlflow", uri)
    assert r.exit_code == 0, r.output
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and "tensorboard --logdir" in r.output

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "student-skd.s0/val_f1" in tags and len(acc.Scalars("student-skd.s0/val_f1")) == 2

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)   # (the fluent API would set a process-wide URI)
    exp = client.get_experiment_by_name("edgeskd")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "run"
    hist = client.get_metric_history(runs[0].info.run_id, "student-skd.s0.val_f1")
    assert [m.step for m in hist] == [1, 2]
    assert "test.student-skd.f1" in runs[0].data.metrics and runs[0].data.params["epochs"] == "2"
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"report.md", "metrics.json"} <= arts


def test_an_unreachable_mlflow_server_does_not_stop_training(cli, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    r = cli("train", *TINY, "--students", "none", "--out", out, "--mlflow", "http://127.0.0.1:9")
    assert r.exit_code == 0, r.output
    assert "MLflow tracking to http://127.0.0.1:9 is off" in r.output
    assert (out / "metrics.json").is_file()
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ   # nothing process-wide is left behind
