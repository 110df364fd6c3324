"""`edgeskd quickstart`: step plumbing, the summary, and (slow) every step end to end at tiny sizes."""

from __future__ import annotations

import json

import pytest


def test_invoke_returns_the_commands_exit_code(tmp_path, capsys):
    from edgeskd.cli.quickstart import _invoke

    assert _invoke(["stream", "--video", str(tmp_path / "none.mp4"), "--engine", str(tmp_path / "m.onnx")]) == 4
    assert "m.onnx" in capsys.readouterr().err
    assert _invoke(["synth-video", str(tmp_path / "v.mp4"), "--resolution", "x"]) == 2
    assert _invoke(["stream", "--no-such-option"]) == 2


def test_summary_reads_what_the_steps_wrote(tmp_path):
    import os
    import time

    from edgeskd.cli.quickstart import _built_artifact, summarize

    (tmp_path / "run").mkdir()
    (tmp_path / "engines").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(
        {"models": {"teacher": {"f1": 80.0, "params": 11}, "student-skd": {"f1": 75.5, "params": 2}},
         "comparisons": {"skd-kd": {"mean": 1.5, "ci95": [0.2, 2.9], "excludes_zero": True, "n_seeds": 1},
                         "kd-none": {"mean": 0.5, "ci95": [-1.0, 2.0], "excludes_zero": False, "n_seeds": 1}}}))
    (tmp_path / "bench.json").write_text(json.dumps({"rows": [
        {"name": "student-skd.int8", "backend": "onnxruntime", "precision": "int8", "f1": 74.0,
         "latency_p50_ms": 0.8, "status": "ok"}]}))
    (tmp_path / "stream.json").write_text(json.dumps({"fps": 250.0, "latency_ms": {"p50": 3.0},
                                                      "labels": {"raw": {"f1": 0.5}, "smoothed": {"f1": 0.6}}}))
    eng = tmp_path / "engines"
    for name in ("student-skd.onnx", "student-skd.int8.qdq.onnx", "student-skd.int8.cpu.onnx",
                 "student-skd.fp32.cpu.onnx"):
        (eng / name).write_bytes(b"x")
    # an earlier run's report names the int8 artifact; this run's build chose fp32-opt
    old = eng / "student-skd.int8.cpu.onnx.json"
    old.write_text(json.dumps({"artifact": str(eng / "student-skd.int8.cpu.onnx")}))
    os.utime(old, (time.time() - 600, time.time() - 600))
    since = time.time()
    assert _built_artifact(eng, since) is None          # nothing built by this run yet
    (eng / "student-skd.fp32.cpu.onnx.json").write_text(json.dumps({"artifact": str(eng / "student-skd.fp32.cpu.onnx")}))
    art = _built_artifact(eng, since)
    assert art is not None and art.name == "student-skd.fp32.cpu.onnx"
    s = summarize(tmp_path, art)
    assert s["models"]["student-skd"]["f1"] == 75.5
    assert s["bench"][0]["f1"] == 74.0 and s["bench"][0]["precision"] == "int8"
    assert s["stream"]["fps"] == 250.0 and s["stream"]["frame_f1_smoothed"] == 60.0   # percent, as "units" says
    assert s["comparisons"] == {"skd-kd": {"mean": 1.5, "ci95": [0.2, 2.9], "excludes_zero": True, "n_seeds": 1}}


def test_summary_table_shows_skd_differences_with_their_interval(tmp_path, monkeypatch, cli):
    from edgeskd.cli import quickstart as qs

    summary = {"models": {"student-skd": {"f1": 75.5}}, "bench": [], "total_seconds": 60.0,
               "comparisons": {"skd-kd": {"mean": 1.5, "ci95": [0.2, 2.9], "excludes_zero": True, "n_seeds": 1},
                               "skd-none": {"mean": -0.25, "ci95": [-1.5, 1.0], "excludes_zero": False,
                                            "n_seeds": 3}},
               "stream": {"engine": "e.onnx", "fps": 100.0, "latency_ms": {"p50": 2.0}, "frame_f1_smoothed": 0.5},
               "artifacts": {}}
    monkeypatch.setattr(qs, "run_quickstart", lambda *a, **k: qs.QuickstartResult(tmp_path, summary=summary))
    r = cli("quickstart", "--workdir", tmp_path)
    assert r.exit_code == 0, r.output
    rows = [ln for ln in r.output.splitlines() if "SKD −" in ln]
    assert len(rows) == 2 and "+1.50 [+0.20, +2.90]" in rows[0] and "one seed" in rows[0]
    assert "-0.25 [-1.50, +1.00]" in rows[1] and "plain" in rows[1]


def test_unknown_profile(tmp_path):
    from edgeskd.errors import UsageError
    from edgeskd.cli.quickstart import run_quickstart

    with pytest.raises(UsageError, match="fast"):
        run_quickstart(tmp_path, profile="huge")


@pytest.mark.slow
def test_quickstart_smoke_end_to_end(tmp_path):
    from edgeskd.cli.quickstart import run_quickstart

    res = run_quickstart(tmp_path / "qs", profile="smoke", say=lambda s: None)
    names = [s.name for s in res.steps]
    assert names[0] == "synthetic data" and names[-1] == "stream the video" and len(names) == 7
    assert all(s.exit_code in (0, 6) for s in res.steps)
    s = res.summary
    assert {"teacher", "student-skd"} <= set(s["models"])
    assert s["stream"]["fps"] and s["stream"]["fps"] > 0
    q = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert q["profile"] == "smoke" and q["steps"][-1]["argv"][:2] == ["edgeskd", "stream"]
    for p in ("annotated.mp4", "stream.json", "bench.json", "video.labels.csv", "run/metrics.json"):
        assert (tmp_path / "qs" / p).exists(), p
    assert list((tmp_path / "qs" / "calibration").glob("*.json"))   # the workdir holds everything
    assert s["stream"]["engine"] != str(tmp_path / "qs" / "engines" / "student-skd.onnx") or \
        any(n for n in res.notes if "gate" in n)


def test_quickstart_reuses_only_its_own_matching_data(tmp_path, monkeypatch):
    from edgeskd.cli import quickstart as qs
    from edgeskd.errors import UsageError

    calls: list[list[str]] = []

    def fake_invoke(argv):
        calls.append(argv)
        raise SystemExit("stop after the first step")

    monkeypatch.setattr(qs, "_invoke", fake_invoke)
    data = tmp_path / "w" / "data"
    data.mkdir(parents=True)
    fast = qs.PROFILES["fast"]
    (data / "dataset.json").write_text(json.dumps({"generator": {"n": fast.synth_n, "size": fast.synth_size,
                                                                 "seed": 0}}))
    with pytest.raises(SystemExit):
        qs.run_quickstart(tmp_path / "w", profile="fast", say=lambda s: None)
    assert calls[-1][0] == "train"                              # same n/size/seed: reused
    with pytest.raises(SystemExit):
        qs.run_quickstart(tmp_path / "w", profile="fast", seed=3, say=lambda s: None)
    assert calls[-1][:2] == ["synth", str(data)] and "--overwrite" in calls[-1]   # another seed: rewritten
    (data / "dataset.json").unlink()
    (data / "mine.png").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a synthetic set"):
        qs.run_quickstart(tmp_path / "w", profile="fast", say=lambda s: None)


def test_quickstart_refuses_a_folder_that_is_not_its_own(tmp_path, cli):
    """A non-empty --workdir that no quickstart wrote (a user's own run) is refused before anything runs."""
    own = tmp_path / "mine"
    (own / "run").mkdir(parents=True)
    (own / "run" / "teacher.pt").write_bytes(b"weights")
    r = cli("quickstart", "--workdir", own)
    assert r.exit_code == 2 and "not a quickstart folder" in r.output
    assert sorted(p.name for p in own.rglob("*")) == ["run", "teacher.pt"]
