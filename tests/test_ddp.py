"""The same `edgeskd train` under torchrun: 2 gloo processes on CPU, a tiny job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")


def test_torchrun_two_gloo_processes(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "edgeskd", "train", "--synthetic-n", "60", "--img-size", "32", "--batch-size", "8",
           "--epochs", "1", "--teacher-epochs", "1", "--students", "none,skd", "--device", "cpu",
           "--out", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["device"] == "cpu"
    assert set(m["models"]) == {"teacher", "student-none", "student-skd"}
    ds = m["dataset"]
    assert ds["n_train"] + ds["n_val"] + ds["n_test"] == 60
    for mm in m["models"].values():
        assert 0 <= mm["f1"] <= 100 and mm["per_subclass_accuracy"]
        # every test sample was evaluated exactly once (shards gathered on every rank)
        assert sum(map(sum, mm["confusion"])) == ds["n_test"]
    # only rank 0 writes: one log line per epoch per model, one set of files
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [x["model"] for x in log] == ["teacher", "student-none", "student-skd"]
    from edgeskd.models.checkpoint import model_from_checkpoint

    for name, n_out in (("teacher", 6), ("student-none", 2), ("student-skd", 6)):
        model, meta, _ = model_from_checkpoint(out / f"{name}.pt")
        assert meta.num_outputs == n_out
        assert not any(k.startswith("module.") for k in model.state_dict())  # saved unwrapped
    assert (out / "report.md").is_file() and (out / "dark_knowledge.png").is_file()
