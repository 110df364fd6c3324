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
        # HP-vs-adenoma figures count the polyp test images; presence figures the rest
        n_polyp = mm["presence"]["n_polyp"] if "presence" in mm else ds["n_test"]
        assert sum(map(sum, mm["confusion"])) == n_polyp
        assert n_polyp + mm.get("presence", {}).get("n_no_polyp", 0) == ds["n_test"]
    # only rank 0 writes: one log line per epoch per model, one set of files
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [x["model"] for x in log] == ["teacher", "student-none", "student-skd"]
    from edgeskd.models.checkpoint import model_from_checkpoint

    for name, n_out in (("teacher", 11), ("student-none", 3), ("student-skd", 11)):
        model, meta, _ = model_from_checkpoint(out / f"{name}.pt")
        assert meta.num_outputs == n_out
        assert not any(k.startswith("module.") for k in model.state_dict())  # saved unwrapped
    assert (out / "report.md").is_file() and (out / "dark_knowledge.png").is_file()


# -- device mapping and the non-finite-loss flag --------------------------------------------------------------
def _fake_gpus(monkeypatch, n: int, visible: str | None = None):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_local_rank_gets_its_own_gpu_and_never_shares_one(monkeypatch):
    from edgeskd.distill.ddp import resolve_device
    from edgeskd.errors import BackendUnavailable, UsageError

    _fake_gpus(monkeypatch, 2)
    assert [resolve_device("auto", r) for r in (0, 1)] == ["cuda:0", "cuda:1"]
    assert resolve_device("cpu", 1) == "cpu"
    with pytest.raises(UsageError, match=r"local rank 2 has no GPU of its own \(2 visible\).*--nproc-per-node 2"):
        resolve_device("cuda", 2)          # was cuda:0 (2 % 2): two ranks on one GPU, which NCCL rejects
    _fake_gpus(monkeypatch, 1, visible="3")  # a launcher that shows each rank its own single GPU
    assert resolve_device("auto", 5) == "cuda:0"
    _fake_gpus(monkeypatch, 1, visible="0,1")
    with pytest.raises(UsageError):
        resolve_device("auto", 1)
    _fake_gpus(monkeypatch, 0)
    assert resolve_device("auto", 3) == "cpu"
    with pytest.raises(BackendUnavailable):
        resolve_device("cuda", 0)


def test_nonfinite_loss_single_process():
    from edgeskd.distill.ddp import DistContext, nonfinite_ranks

    ctx = DistContext()
    assert nonfinite_ranks(ctx, torch.tensor(1.5)) == []
    assert nonfinite_ranks(ctx, torch.tensor(float("inf"))) == [0]


class _NoBackward:
    """Optimizer and scaler of a step that must stop before ``backward()``."""

    def zero_grad(self, set_to_none=True):
        raise AssertionError("the step went on to backward() after a non-finite loss")

    scale = step = zero_grad


def _diverging_step(loss, dist):
    import types

    from edgeskd.distill import loop

    t = types.SimpleNamespace(spec=types.SimpleNamespace(name="skd", task=lambda batch: {"loss": loss}),
                              optimizer=_NoBackward(), scaler=_NoBackward(), rng_state=None)
    loop._step(t, batch=None, epoch=2, seed=0, reporter=None, device="cpu", dist=dist)


def test_training_step_checks_the_loss_on_every_rank_before_backward(monkeypatch):
    """The loop's step asks ``ddp.nonfinite_ranks`` (one all-reduce) before ``backward()``: a rank
    whose own loss is finite stops too when another rank's is not."""
    from edgeskd.distill import ddp
    from edgeskd.distill.ddp import DistContext
    from edgeskd.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="skd: loss became nan at epoch 3"):
        _diverging_step(torch.tensor(float("nan")), DistContext())
    asked = []

    def rank1_diverged(ctx, loss):
        asked.append((ctx.rank, float(loss)))
        return [1]

    monkeypatch.setattr(ddp, "nonfinite_ranks", rank1_diverged)
    with pytest.raises(TrainingDiverged, match="skd: loss became non-finite on rank 1 at epoch 3"):
        _diverging_step(torch.tensor(0.7), DistContext(rank=0, world_size=2, backend="gloo"))
    assert asked == [(0, pytest.approx(0.7))]


_DIVERGE = r"""
import datetime, json, sys
import torch, torch.distributed as dist
from edgeskd.distill.ddp import DistContext, nonfinite_ranks

rank, store, backend = int(sys.argv[1]), sys.argv[2], sys.argv[3]
device = f"cuda:{rank}" if backend == "nccl" else "cpu"
if backend == "nccl":
    torch.cuda.set_device(device)
dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
ctx = DistContext(rank=rank, world_size=2, local_rank=rank, device=device, backend=backend)
w = torch.ones(4, device=device)
out = {"rank": rank, "step": None, "bad": []}
for step in range(8):
    loss = (w * (step + 1)).sum()
    if rank == 1 and step == 3:
        loss = loss * float("nan")         # diverges on rank 1 only
    bad = nonfinite_ranks(ctx, loss)
    if bad:
        out.update(step=step, bad=bad)
        break
    g = w.clone()
    dist.all_reduce(g)                     # DDP's gradient all-reduce: a rank that left alone hangs the other here
print(json.dumps(out), flush=True)
dist.destroy_process_group()
"""


def _two_ranks(tmp_path, backend: str) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", _DIVERGE, str(r), str(store), backend], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    return _rank_results(procs, "a rank hung: the divergence did not reach every rank")


def _rank_results(procs, hung: str) -> list[dict]:
    """Each rank process's last stdout line as JSON; every rank is killed and the test fails with
    ``hung`` if one does not finish in 120 s."""
    outs = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(hung)
        assert p.returncode == 0, se[-2000:]
        outs.append(json.loads(so.strip().splitlines()[-1]))
    return outs


def test_one_rank_diverging_stops_every_rank_at_the_same_step(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    outs = _two_ranks(tmp_path, "gloo")
    assert [(o["rank"], o["step"], o["bad"]) for o in outs] == [(0, 3, [1]), (1, 3, [1])]


@pytest.mark.gpu
def test_one_rank_diverging_over_nccl(tmp_path):
    if torch.cuda.device_count() < 2 or not torch.distributed.is_nccl_available():
        pytest.skip("needs 2 GPUs and NCCL")
    outs = _two_ranks(tmp_path, "nccl")
    assert [(o["rank"], o["step"], o["bad"]) for o in outs] == [(0, 3, [1]), (1, 3, [1])]


@pytest.mark.gpu
def test_ranks_beyond_the_gpus_are_refused_on_this_machine(monkeypatch):
    """The real torch.cuda: rank k → cuda:k; a rank past the last GPU is refused, not wrapped."""
    from edgeskd.distill.ddp import resolve_device
    from edgeskd.errors import UsageError

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    n = torch.cuda.device_count()
    assert [resolve_device("cuda", r) for r in range(n)] == [f"cuda:{r}" for r in range(n)]
    with pytest.raises(UsageError, match="no GPU of its own"):
        resolve_device("cuda", n)


# -- two ranks on one GPU are refused after joining, on every rank, in one line ------------------------------
_SHARED_GPU = r"""
import json, os, sys
import torch, torch.distributed as dist
from edgeskd.distill import ddp
from edgeskd.errors import UsageError

rank, same = int(os.environ["RANK"]), sys.argv[1] == "same"
# what CUDA_VISIBLE_DEVICES=0 torchrun --nproc-per-node 2 gives each rank: cuda:0 ...
ddp.resolve_device = lambda pref, local_rank=0: "cuda:0"
torch.cuda.set_device = lambda device: None
ddp.process_group_backend = lambda device: "gloo"          # (gloo on this CPU machine, NCCL on a GPU one)
# ... and the same GPU UUID on the same host (or each its own, as with two visible GPUs)
ddp.gpu_uuid = lambda device: "GPU-5f0c9d2e" if same else f"GPU-000{rank}"
out = {"rank": rank}
try:
    ctx = ddp.init_context("cuda")
    out["joined"] = [ctx.world_size, ctx.device]
    ddp.cleanup(ctx)
except UsageError as e:
    out["error"] = str(e)
out["still_in_group"] = dist.is_initialized()
print(json.dumps(out), flush=True)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks_on_one_gpu(mode: str) -> list[dict]:
    port = _free_port()
    procs = []
    for r in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path), RANK=str(r), LOCAL_RANK=str(r),
                   WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", _SHARED_GPU, mode], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return _rank_results(procs, "a rank hung")


def test_two_ranks_reporting_one_gpu_are_refused_on_every_rank():
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    import socket

    outs = _two_ranks_on_one_gpu("same")
    for o in outs:
        assert "joined" not in o and not o["still_in_group"]
        assert o["error"] == (f"ranks 0 and 1 share one GPU (GPU-5f0c9d2e on {socket.gethostname()}): NCCL needs one "
                              "GPU per rank; show each rank its own GPU (CUDA_VISIBLE_DEVICES must list as many GPUs "
                              "as --nproc-per-node) or use --device cpu (gloo)")
    outs = _two_ranks_on_one_gpu("distinct")                 # one GPU each: joined as before
    assert [o.get("joined") for o in outs] == [[2, "cuda:0"], [2, "cuda:0"]] and not any("error" in o for o in outs)


def test_shared_gpu_check_is_for_distributed_cuda_runs_only(monkeypatch):
    from edgeskd.distill import ddp

    monkeypatch.setattr(ddp, "gpu_uuid", lambda device: pytest.fail("asked for a GPU UUID"))
    ddp.refuse_shared_gpus(ddp.DistContext(device="cuda:0"))                          # one process
    ddp.refuse_shared_gpus(ddp.DistContext(rank=0, world_size=2, device="cpu", backend="gloo"))
