"""The stream with requests in flight (a runner with ``pipeline_depth`` > 1, as the remote one):
results stay in frame order when futures complete out of order, a failure mid-stream ends it with
the outputs up to the frame before, Ctrl-C finishes what is in flight, both stages' CPU is counted;
and the Runner base's ``infer_async``. Offline, CPU, with a fake runner over the tiny ONNX model."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from edgeskd.errors import ServerError, ServerLost, UsageError
from edgeskd.runtime.fake import FakeRunner
from helpers_stream import META, make_onnx, make_video


class ReversingRunner(FakeRunner):
    """A fake remote runner: ``infer_async`` holds its futures and completes them newest first, once
    ``pipeline_depth`` are held or (the stream's tail) no new request came for 0.3 s. ``fail_at``: the call (0-based)
    whose future raises ``error`` instead. ``completed``: call numbers in completion order."""

    def __init__(self, inner, depth: int = 3, fail_at: int | None = None, error: Exception | None = None):
        super().__init__(inner.metadata, lambda b: inner.infer(b), max_batch=inner.max_batch, inner=inner)
        self.pipeline_depth = depth
        self.fail_at, self.error = fail_at, error
        self.held: list[tuple[int, Future, np.ndarray]] = []
        self.completed: list[int] = []
        self.submitted = 0
        self._lock = threading.Lock()
        self._last = time.perf_counter()
        self._stop = threading.Event()
        threading.Thread(target=self._flusher, daemon=True).start()

    def infer_async(self, batch: np.ndarray) -> Future:
        out = self.infer(batch)              # the base's checks and lifecycle, counted in ``calls``
        fut: Future = Future()
        with self._lock:
            self.held.append((self.submitted, fut, out))
            self.submitted += 1
            self._last = time.perf_counter()
            if len(self.held) >= self.pipeline_depth:
                self._release()
        return fut

    def _release(self) -> None:
        for k, fut, out in reversed(self.held):
            self.completed.append(k)
            if k == self.fail_at:
                fut.set_exception(self.error)
            else:
                fut.set_result(out)
        self.held = []

    def _flusher(self) -> None:
        while not self._stop.wait(0.01):
            with self._lock:
                if self.held and time.perf_counter() - self._last > 0.3:
                    self._release()

    def _deactivate_impl(self) -> None:
        self._stop.set()
        super()._deactivate_impl()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("inflight") / "tiny.onnx")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("inflight") / "v.mp4", n=40)


def _local(onnx_path):
    from edgeskd.runtime.loader import load_runner

    return load_runner(onnx_path, threads=1)


def _stream(video, runner, tmp_path, name, **kw):
    from edgeskd.stream import StreamConfig, run_stream

    jl, st = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
    res = run_stream(StreamConfig(video=str(video), realtime=False, measure_ceiling=False, jsonl=jl, stats=st, **kw),
                     runner=runner)
    rows = [json.loads(x) for x in jl.read_text().splitlines()] if jl.exists() else None
    for r in rows or []:
        r.pop("latency_ms")
    return res, rows


def test_out_of_order_futures_give_the_synchronous_results_in_frame_order(onnx_path, video, tmp_path):
    sync_res, sync_rows = _stream(video, FakeRunner.wrapping(_local(onnx_path), lambda m, b: m.infer(b)), tmp_path, "s")
    runner = ReversingRunner(_local(onnx_path), depth=3)
    res, rows = _stream(video, runner, tmp_path, "a")
    assert sync_res.stats["source"]["pipeline_depth"] == 1 and res.stats["source"]["pipeline_depth"] == 3
    # the futures really completed out of order ...
    assert runner.completed[:3] == [2, 1, 0] and runner.completed != sorted(runner.completed)
    # ... and every frame's probabilities, smoothed values and states are those of the one-thread loop
    assert len(rows) == len(sync_rows) == 40 and [r["frame"] for r in rows] == list(range(40))
    assert rows == sync_rows
    assert res.exit_code == 0 and res.stats["frames_processed"] == 40
    # both stages' CPU is counted for the inference thread
    assert res.stats["source"]["cpu_ms_per_frame"]["inference_thread"] > 0


def test_a_batch_of_frames_in_flight(onnx_path, video, tmp_path):
    _, sync_rows = _stream(video, _local(onnx_path), tmp_path, "s4", batch=4)
    runner = ReversingRunner(_local(onnx_path), depth=2)
    res, rows = _stream(video, runner, tmp_path, "a4", batch=4)
    assert rows == sync_rows and len(rows) == 40 and runner.submitted <= 40 // 2


def test_server_lost_mid_stream_keeps_the_frames_before(onnx_path, video, tmp_path):
    lost = ServerLost("Triton server grpc://x:1 stopped answering after 9 frames: unavailable")
    runner = ReversingRunner(_local(onnx_path), depth=3, fail_at=9, error=lost)
    res, rows = _stream(video, runner, tmp_path, "l")
    # frames 10 and 11 came back before 9 failed (reverse order): they are not written
    assert 10 in runner.completed[:runner.completed.index(9)]
    assert res.exit_code == ServerLost.exit_code and "stopped answering" in res.error and "\n" not in res.error
    assert [r["frame"] for r in rows] == list(range(9))
    assert res.stats["frames_processed"] == 9
    assert json.loads((tmp_path / "l.json").read_text())["source"]["server_lost"]


def test_a_refused_first_request_fails_the_run_and_writes_nothing(onnx_path, video, tmp_path):
    runner = ReversingRunner(_local(onnx_path), depth=3, fail_at=0, error=ServerError("model 'x' refused a batch"))
    with pytest.raises(ServerError, match="refused"):
        _stream(video, runner, tmp_path, "r")
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "r.json").exists()
    assert not list(tmp_path.glob(".*.tmp*"))


class _Source:
    """A source of ``n`` frames whose ``get_batch`` raises KeyboardInterrupt after them (Ctrl-C)."""

    def __init__(self, frames, interrupt: bool = True) -> None:
        self.frames, self.interrupt = list(frames), interrupt

    def start(self) -> None:
        pass

    def get_batch(self, n: int):
        if not self.frames:
            if self.interrupt:
                raise KeyboardInterrupt
            return []
        return [self.frames.pop(0)]


class _Process:
    """A FrameProcessor stand-in for ``pump_in_flight``: each batch's future completes ``delay_s``
    after submission (on a timer thread; None: at once); ``complete`` spends ``burn_s`` of CPU and
    returns the items."""

    depth = 3

    def __init__(self, delay_s: float | None, burn_s: float = 0.0, request_cpu_s: float = 0.0) -> None:
        self.delay_s, self.burn_s, self.request_cpu_s = delay_s, burn_s, request_cpu_s
        self.runner_cpu_s = 0.0      # what a runner's own threads report (Runner.async_cpu_s)

    def submit(self, items):
        from edgeskd.stream.pipeline import Submitted

        fut: Future = Future()

        def answer() -> None:
            self.runner_cpu_s += self.request_cpu_s
            fut.set_result(len(items))

        if self.delay_s is None:    # answered at once: completed in the submitting thread
            answer()
        else:
            threading.Timer(self.delay_s, answer).start()
        return Submitted(items, None, fut)

    def complete(self, sub):
        sub.logits.result()
        t = time.thread_time()
        while time.thread_time() - t < self.burn_s:   # CPU spent in the completion stage
            pass
        return list(sub.items)


class _ListSink:
    def __init__(self) -> None:
        self.got = []

    def write(self, r) -> None:
        self.got.append(r)


def test_ctrl_c_finishes_the_frames_in_flight_and_cpu_counts_both_stages():
    from edgeskd.stream.inflight import pump_in_flight

    process, sink = _Process(delay_s=0.2, burn_s=0.05, request_cpu_s=1.0), _ListSink()
    wall, cpu, interrupted, lost = pump_in_flight(_Source(range(5)), process, [sink], 1, None)
    assert interrupted and lost is None
    assert sink.got == list(range(5))           # the frames in flight at Ctrl-C were completed and written
    # completing (5 x 50 ms of CPU, on the timer threads) and the runner's threads (5 x 1 s reported)
    assert 5.0 + 5 * 0.05 * 0.9 <= cpu < 5.0 + 1.0
    assert wall >= 0.2


def test_ctrl_c_while_the_submitting_thread_completes_a_batch_ends_the_stream_cleanly():
    from edgeskd.stream.inflight import pump_in_flight

    class CtrlC(_ListSink):
        def write(self, r) -> None:
            if r == 3:
                raise KeyboardInterrupt
            super().write(r)

    sink = CtrlC()
    _, _, interrupted, lost = pump_in_flight(_Source(range(10), interrupt=False), _Process(delay_s=None), [sink], 1,
                                             None)
    assert interrupted and lost is None and sink.got == [0, 1, 2]


def test_at_most_depth_batches_in_flight():
    from edgeskd.stream.inflight import pump_in_flight

    in_flight, peak = [0], [0]
    lock = threading.Lock()

    class Counting(_Process):
        def submit(self, items):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            return super().submit(items)

        def complete(self, sub):
            out = super().complete(sub)
            with lock:
                in_flight[0] -= 1
            return out

    process, sink = Counting(delay_s=0.02), _ListSink()
    pump_in_flight(_Source(range(12), interrupt=False), process, [sink], 1, None)
    assert sink.got == list(range(12)) and peak[0] == 3


def test_a_sink_error_stops_the_stream_and_raises():
    from edgeskd.errors import VideoError
    from edgeskd.stream.inflight import pump_in_flight

    class Broken(_ListSink):
        def write(self, r) -> None:
            if r == 4:
                raise VideoError("writing the annotated video failed: disk full")
            super().write(r)

    sink = Broken()
    with pytest.raises(VideoError, match="disk full"):
        pump_in_flight(_Source(range(20), interrupt=False), _Process(delay_s=0.01), [sink], 1, None)
    assert sink.got == [0, 1, 2, 3]


def test_runner_infer_async_default_is_infer(onnx_path):
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with _local(onnx_path) as r:
        assert r.pipeline_depth == 1
        fut = r.infer_async(x)
        assert fut.done()
        np.testing.assert_array_equal(fut.result(), r.infer(x))
        assert fut.result().dtype == np.float32
        for bad, msg in ((x[0], "rank"), (np.zeros((1, 3, 16, 16), np.float32), "does not match"),
                         (x.astype(np.uint8), "dtype")):
            with pytest.raises(UsageError, match=msg):
                r.infer_async(bad)
    fake = FakeRunner(META, lambda b: b.reshape(len(b), -1)[:, :4].astype(np.float64), max_batch=2)
    out = fake.infer_async(x).result()           # activates like infer, float32 like infer
    assert fake.active and out.dtype == np.float32 and out.shape == (2, 4)
    with pytest.raises(UsageError, match="max batch"):
        fake.infer_async(np.zeros((3, 3, 32, 32), np.float32))


class _DelayRunner(FakeRunner):
    """A fake remote runner: each request's logits come back ``delay_s`` after it was sent (a timer
    thread), while the caller goes on."""

    def __init__(self, inner, delay_s: float, depth: int = 3) -> None:
        super().__init__(inner.metadata, lambda b: inner.infer(b), max_batch=inner.max_batch, inner=inner)
        self.pipeline_depth, self.delay_s = depth, delay_s

    def infer_async(self, batch: np.ndarray) -> Future:
        out = self.infer(batch)
        fut: Future = Future()
        threading.Timer(self.delay_s, fut.set_result, [out]).start()
        return fut


def test_realtime_round_trips_longer_than_a_frame_no_longer_drop_frames(onnx_path, tmp_path):
    """30 fps, a 50 ms round trip: the one-thread loop waits for each answer and drops about every
    other frame; with 3 requests in flight every frame is taken, and each frame's latency still
    covers its round trip (it is stamped when the answer is in hand)."""
    from edgeskd.stream import StreamConfig, run_stream

    video = make_video(tmp_path / "rt.mp4", n=45, fps=30)

    def blocking(model, batch):
        time.sleep(0.05)
        return model.infer(batch)

    runs = {}
    for name, runner in (("sync", FakeRunner.wrapping(_local(onnx_path), blocking)),
                         ("inflight", _DelayRunner(_local(onnx_path), 0.05))):
        jl = tmp_path / f"{name}.jsonl"
        res = run_stream(StreamConfig(video=str(video), realtime=True, measure_ceiling=False, jsonl=jl), runner=runner)
        runs[name] = (res.stats, [json.loads(x) for x in jl.read_text().splitlines()])
    sync, (inflight, rows) = runs["sync"][0], runs["inflight"]
    assert sync["frames_dropped"] >= 12
    assert inflight["frames_dropped"] <= 3 and inflight["frames_dropped"] < sync["frames_dropped"] // 3
    assert min(r["latency_ms"] for r in rows) >= 50.0
    assert [r["frame"] for r in rows] == sorted(r["frame"] for r in rows)
