"""The load test's bookkeeping (Triton statistics deltas, process-tree CPU, totals) and its bad input;
the full run is `edgeskd loadtest` (README "Serving many streams"), not a unit test."""

from __future__ import annotations

import os

import pytest

from edgeskd.serve.loadtest import Phase, StreamRow, tree_cpu_s, triton_delta


def _stats(hist: dict[int, int], inferences: int, executions: int, queue_count: int, queue_ns: int) -> dict:
    return {"model_stats": [{
        "inference_count": str(inferences), "execution_count": str(executions),
        "inference_stats": {"queue": {"count": str(queue_count), "ns": str(queue_ns)}},
        "batch_stats": [{"batch_size": str(b), "compute_infer": {"count": str(n), "ns": "1"}} for b, n in hist.items()],
    }]}


def test_triton_delta_is_over_the_phase_only():
    before = _stats({1: 5}, 5, 5, 5, 5_000_000)                        # e.g. warm-up and earlier clients
    after = _stats({1: 9, 2: 3, 4: 2}, 5 + 4 + 6 + 8, 5 + 4 + 3 + 2, 5 + 18, 5_000_000 + 18 * 2_000_000)
    d = triton_delta(before, after)
    assert d["batch_size_histogram"] == {1: 4, 2: 3, 4: 2}
    assert (d["executions"], d["inferences"]) == (9, 18)
    assert d["mean_batch_size"] == 2.0 and d["mean_queue_ms"] == 2.0
    empty = triton_delta(after, after)
    assert empty["mean_batch_size"] is None and empty["batch_size_histogram"] == {}


def test_phase_totals_pool_latencies_and_count_server_cpu():
    ph = Phase("server", rows=[StreamRow(0, 100, 2, 102, 10.0, 20.0, 1.0, 0), StreamRow(1, 50, 0, 50, 5.0, 9.0, 0.5, 0)],
               latencies_ms=[1.0] * 99 + [100.0], server_cpu_s=0.5)
    t = ph.totals()
    assert (t["frames"], t["dropped"], t["decoded"], t["failed_streams"]) == (150, 2, 152, 0)
    assert t["cpu_ms_per_frame"] == pytest.approx(1000 * 2.0 / 150, abs=1e-3)
    assert t["latency_p50_ms"] == 1.0 and t["latency_p99_ms"] > 1.0


def test_tree_cpu_counts_this_process():
    busy = sum(i * i for i in range(200_000))
    assert busy > 0 and tree_cpu_s(os.getpid()) > 0
    assert tree_cpu_s(2 ** 22 + 12345) == 0.0                          # no such process


def test_loadtest_bad_input(cli, tmp_path):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"x")
    r = cli("loadtest", art, "--video", tmp_path / "none.mp4")
    assert r.exit_code == 2 and "synth-video" in r.output
    r = cli("loadtest", art, "--video", art, "--streams", "0")
    assert r.exit_code == 2 and "--streams" in r.output
    r = cli("loadtest", art, "--video", art, "--server", "http://h:8000")
    assert r.exit_code == 2 and "grpc://" in r.output
    report = tmp_path / "report.json"
    report.write_text("{}")
    r = cli("loadtest", art, "--video", art, "--out", report)   # one overwrite policy: refused without --overwrite
    assert r.exit_code == 2 and "--overwrite" in r.output and report.read_text() == "{}"


def test_local_streams_start_together_at_the_gate(tmp_path):
    """Two real `edgeskd stream` processes: both reach the start gate before either is let go, and
    each reports its CPU from the first frame on (the start-up is counted apart)."""
    from helpers_stream import make_onnx, make_video

    from edgeskd.serve.loadtest import LoadTestConfig, run_streams

    video = make_video(tmp_path / "v.mp4", n=12)
    model = make_onnx(tmp_path / "m.onnx")
    work = tmp_path / "w"
    work.mkdir()
    seen = {}

    def on_go():   # the moment the gate opens: every stream is waiting there
        seen["ready"] = len(list((work / "local-gate").glob("ready-*")))

    cfg = LoadTestConfig(artifact=model, video=str(video), streams=2, max_frames=12)
    phase = run_streams(cfg, "local", ["--engine", str(model), "--threads", "1"], work, on_go=on_go)
    assert seen["ready"] == 2
    assert [r.exit_code for r in phase.rows] == [0, 0], [r.error for r in phase.rows]
    assert all(r.frames > 0 and 0 < r.cpu_s < r.cpu_total_s for r in phase.rows)
    assert phase.to_dict()["totals"]["client_cpu_total_s"] > phase.to_dict()["totals"]["client_cpu_s"]


def test_streams_that_fail_before_the_gate_end_the_load_test(tmp_path):
    """Streams that exit before the start gate (here: no server at that port) are collected there, not
    waited for until the time limit; every stream failing is one line, not a table of failures."""
    from helpers_stream import make_onnx, make_video

    from edgeskd.errors import ServerError
    from edgeskd.serve.loadtest import LoadTestConfig, run_streams
    from edgeskd.serve.server import free_port

    video = make_video(tmp_path / "v.mp4", n=6)
    model = make_onnx(tmp_path / "m.onnx")
    work = tmp_path / "w"
    work.mkdir()
    cfg = LoadTestConfig(artifact=model, video=str(video), streams=2, max_frames=6, timeout_s=120.0)
    url = f"grpc://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError, match="every server stream failed before its first frame: .*unreachable"):
        run_streams(cfg, "server", ["--server", url, "--model", "m"], work)
