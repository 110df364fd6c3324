"""scripts/gpu-check.sh: on a machine without a GPU it says there is nothing to check, writes its JSON and
exits 0; on a GPU machine (the driver probe faked here, the sections fakes from helpers_gpu_check) each
section runs in a process of its own and is killed with its children at its cap, the budget keeps a
reserve, the JSON is written after every section and also when the run is interrupted, and a pytest
run in which no GPU test passed fails."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_gpu_check_without_a_gpu_has_nothing_to_check(tmp_path):
    from edgeskd.doctor import probe_driver

    if probe_driver()["ok"]:
        pytest.skip("a GPU is present: the full check takes minutes (run scripts/gpu-check.sh)")
    out = tmp_path / "summary.json"
    p = _run("--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "nothing to check" in p.stdout
    s = json.loads(out.read_text())
    assert s["status"] == "nothing to check" and "no NVIDIA GPU" in s["reason"]


def test_gpu_check_rejects_an_unknown_section(tmp_path):
    p = _run("--out", str(tmp_path / "x.json"), "--only", "bogus")
    assert p.returncode == 2 and "unknown section" in p.stderr
    assert not (tmp_path / "x.json").exists()


# -- the runner, with fake sections on a "GPU" machine ----------------------------------------------------------
@pytest.fixture
def gc(monkeypatch, tmp_path):
    """scripts/gpu_check.py imported, the driver probe saying there is a GPU, the fake sections importable
    from the sections' processes."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", mod)
    spec.loader.exec_module(mod)
    from edgeskd import doctor

    monkeypatch.setattr(doctor, "probe_driver", lambda: {"ok": True, "reason": "", "driver": "fake"})
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("GPU_CHECK_TEST_PID_FILE", str(tmp_path / "grandchild.pid"))
    return mod


def _fake(gc, name: str, func: str, least: float = 1, most: float = 30):
    return gc.Section(name, f"helpers_gpu_check:{func}", least, most)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_sections_are_guarded_and_the_summary_says_what_each_did(gc, tmp_path):
    out = tmp_path / "summary.json"
    sections = [_fake(gc, "a_passes", "passes"), _fake(gc, "b_hangs", "hangs", most=4),
                _fake(gc, "c_dies", "dies"), _fake(gc, "d_raises", "raises"), _fake(gc, "e_skips", "skips"),
                _fake(gc, "f_deadline", "stops_at_its_deadline", most=gc.CHILD_MARGIN_S + 1.5),
                _fake(gc, "g_reads_context", "reads_context")]
    t0 = time.monotonic()
    rc = gc.run(out, 120, None, sections=sections)
    wall = time.monotonic() - t0
    s = json.loads(out.read_text())
    r = s["sections"]
    assert rc == 1 and s["status"] == "failed"
    assert r["a_passes"]["status"] == "passed" and r["a_passes"]["deadline_s"] == pytest.approx(30 - gc.CHILD_MARGIN_S)
    # a hanging section is killed at its cap, and so is what it started
    assert r["b_hangs"]["status"] == "failed" and "killed at its 4 s cap" in r["b_hangs"]["error"]
    assert 3.5 <= r["b_hangs"]["seconds"] < 10
    pid = int((tmp_path / "grandchild.pid").read_text())
    assert not _alive(pid), "the hanging section's child survived the kill"
    # a dead process, an exception, a skip and a passed deadline are recorded; the run goes on
    assert r["c_dies"]["status"] == "failed" and "exit 3" in r["c_dies"]["error"] and "about to die" in r["c_dies"]["error"]
    assert r["d_raises"]["status"] == "failed" and "ValueError: a bug in the section" in r["d_raises"]["error"]
    assert r["e_skips"] == {"status": "skipped", "reason": "nothing to run it on", "seconds": r["e_skips"]["seconds"]}
    assert r["f_deadline"]["status"] == "failed" and "deadline passed before the next step" in r["f_deadline"]["error"]
    # what one section learnt reaches the next (each runs in its own process)
    assert r["g_reads_context"] == {"status": "passed", "saw": "by passes", "seconds": r["g_reads_context"]["seconds"]}
    assert wall < 60 and s["seconds"] <= wall + 1


def test_budget_keeps_a_reserve_and_skips_what_does_not_fit(gc, tmp_path):
    out = tmp_path / "summary.json"
    budget = gc.RESERVE_S + 5
    sections = [_fake(gc, "a_hangs", "hangs", least=1, most=100), _fake(gc, "b_passes", "passes", least=3)]
    t0 = time.monotonic()
    assert gc.run(out, budget, None, sections=sections) == 1
    wall = time.monotonic() - t0
    r = json.loads(out.read_text())["sections"]
    assert "killed at its 5 s cap" in r["a_hangs"]["error"]           # budget less the reserve, not its 100 s
    assert r["b_passes"]["status"] == "skipped" and r["b_passes"]["reason"].startswith("time budget: 0 s left")
    assert wall < budget                                                # the reserve was not used up


def test_only_picks_sections_but_keeps_the_ones_others_need(gc, tmp_path):
    out = tmp_path / "summary.json"
    need = gc.Section("setup", "helpers_gpu_check:passes", 1, 30, optional=False)
    sections = [need, _fake(gc, "x_raises", "raises"), _fake(gc, "y_reads_context", "reads_context")]
    assert gc.run(out, 120, ["y_reads_context"], sections=sections) == 0
    assert list(json.loads(out.read_text())["sections"]) == ["setup", "y_reads_context"]


def test_summary_is_written_when_the_run_is_interrupted(gc, tmp_path, monkeypatch):
    out = tmp_path / "summary.json"
    real = gc.run_section
    calls = []

    def second_interrupted(sec, ctx, cap, procs):
        calls.append(sec.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("signal 15")
        return real(sec, ctx, cap, procs)

    monkeypatch.setattr(gc, "run_section", second_interrupted)
    with pytest.raises(KeyboardInterrupt):
        gc.run(out, 120, None, sections=[_fake(gc, "a", "passes"), _fake(gc, "b", "passes"), _fake(gc, "c", "passes")])
    s = json.loads(out.read_text())
    assert s["status"] == "interrupted" and "signal 15" in s["error"]
    assert list(s["sections"]) == ["a"] and s["sections"]["a"]["status"] == "passed"


def test_a_bug_in_the_runner_still_writes_the_summary(gc, tmp_path, monkeypatch):
    out = tmp_path / "summary.json"
    monkeypatch.setattr(gc, "run_section", lambda *a: 1 / 0)
    assert gc.run(out, 120, None, sections=[_fake(gc, "a", "passes")]) == 1
    s = json.loads(out.read_text())
    assert s["status"] == "failed" and s["error"].startswith("ZeroDivisionError")


def test_default_budget_leaves_slack_in_an_eight_minute_slot(gc):
    assert gc.DEFAULT_BUDGET_S <= 420
    assert {s.name for s in gc.SECTIONS if not s.optional} == {"doctor", "synth_video"}
    assert all(s.least < s.most for s in gc.SECTIONS)


# -- the pytest verdict -------------------------------------------------------------------------------------------
def test_an_all_skipped_gpu_pytest_run_fails_and_says_why(gc):
    cuda_torch = {"ok": True, "version": "2.8.0", "cuda_build": "12.8", "cuda_available": True}
    assert gc.pytest_verdict({"passed": 5, "failed": 0, "skipped": 2}, 0, cuda_torch) == ("passed", "")
    assert gc.pytest_verdict({"passed": 5, "failed": 1, "skipped": 0}, 1, cuda_torch)[0] == "failed"
    status, why = gc.pytest_verdict({"passed": 0, "failed": 0, "skipped": 14}, 0, cuda_torch)
    assert status == "failed" and "no GPU test passed although the driver sees a GPU (14 skipped" in why
    wrong_torch = {"ok": True, "version": "2.8.0+cu130", "cuda_build": "13.0", "cuda_available": False}
    status, why = gc.pytest_verdict({"passed": 0, "failed": 0, "skipped": 14}, 0, wrong_torch)
    assert status == "failed" and "torch 2.8.0+cu130 (CUDA build 13.0) sees no GPU" in why and "gpu-cu12" in why
    assert gc.pytest_verdict({"passed": 0, "failed": 0, "skipped": 0}, 5, None)[0] == "failed"   # none collected


def test_tensorrt_section_builds_int8_without_ptq_recovery(gc, tmp_path, monkeypatch):
    """PTQ recovery has its own 600 s budget: inside the section's cap the builds run without it."""
    import types

    from edgeskd.runtime import tensorrt_runner
    from helpers_stream import make_onnx

    onnx_path = make_onnx(tmp_path / "m.onnx")
    calls: list[list[str]] = []

    def cli(args, timeout, cwd=None):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, json.dumps({"winner": "w", "candidates": []}), "")

    monkeypatch.setattr(tensorrt_runner, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(gc, "_cli", cli)
    monkeypatch.setattr(gc, "_export", lambda ctx, deadline: onnx_path)
    monkeypatch.setattr(gc, "_runner_delta", lambda *a: {"max_abs_logits_vs_onnxruntime": 0.0})
    res = gc.section_tensorrt({"work": str(tmp_path), "checkpoint": "x.pt"}, gc.Deadline(60))
    builds = [a for a in calls if a[0] == "build-engine"]
    assert res["status"] == "passed" and len(builds) == 3
    assert all("--no-recovery" in a for a in builds)
