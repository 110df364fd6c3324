"""``edgeskd loadtest``: N concurrent paced (real-time) streams against one Triton server, then the
same N streams as N independent local processes — the baseline — in one run.

Each stream is a real ``edgeskd stream SRC --realtime`` process (decode → preprocess → infer →
smoothing → states → stats), as N endoscopy towers would be; a file source in real-time mode is
played at its own frame rate, and a frame not taken before the next one is decoded is a drop.

The N processes start together: each loads, opens its runner and its video and waits at a start
gate (``stream --start-gate``) until all are ready, so the frames are paced from one instant and
no stream drops frames while the others are still importing (towers run for hours; N start-ups at
once on a small box are not what serving them costs).

Reported, per stream and in all: frames processed, frames dropped, latency p50/p99 (decoded →
prediction ready; "in all" pools every frame); CPU time per frame from the first frame on (each
client's own figure in its stats; ``client_cpu_total_s`` adds the start-up, from ``wait4``; in the
server phase plus the server's whole process tree, tritonserver and its python-backend stub
included, read from ``/proc`` at the start and at the end); and from Triton's own
statistics (deltas over the phase): the histogram of executed batch sizes, the mean batch size
and the mean queue time of a request. Without ``--server`` the command starts ``edgeskd serve`` on
free ports itself and stops it with SIGTERM at the end; with ``--server`` the statistics need
that server's access token and its CPU is counted only with ``--server-pid``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.errors import ServerError, UsageError

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class LoadTestConfig:
    artifact: Path
    video: str
    streams: int = 8
    server: str | None = None           # grpc://HOST:PORT of a running server (default: start one)
    model: str | None = None
    access_token: str | None = None
    server_pid: int | None = None       # with --server: count this process tree's CPU
    max_frames: int | None = None
    threads: int = 1
    max_batch_size: int = 8
    queue_delay_us: int = 10_000
    local: bool = True                  # run the N local processes too
    timeout_s: float = 600.0


@dataclass
class StreamRow:
    stream: int
    frames: int
    dropped: int
    decoded: int
    p50_ms: float | None
    p99_ms: float | None
    cpu_s: float                     # CPU from the first frame on (the stream's stats), else all of it
    exit_code: int
    error: str | None = None
    cpu_total_s: float | None = None  # all of the process, start-up included (wait4)

    @property
    def cpu_ms_per_frame(self) -> float | None:
        return 1000.0 * self.cpu_s / self.frames if self.frames else None


@dataclass
class Phase:
    name: str
    rows: list[StreamRow] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    server_cpu_s: float | None = None
    triton: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        frames = sum(r.frames for r in self.rows)
        client_cpu = sum(r.cpu_s for r in self.rows)
        cpu = client_cpu + (self.server_cpu_s or 0.0)
        lat = np.asarray(self.latencies_ms, np.float64)
        return {
            "streams": len(self.rows), "frames": frames, "dropped": sum(r.dropped for r in self.rows),
            "decoded": sum(r.decoded for r in self.rows), "failed_streams": sum(r.exit_code != 0 for r in self.rows),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            "client_cpu_s": round(client_cpu, 3),
            "client_cpu_total_s": round(sum(r.cpu_total_s if r.cpu_total_s is not None else r.cpu_s
                                            for r in self.rows), 3),   # start-up included
            "server_cpu_s": None if self.server_cpu_s is None else
            round(self.server_cpu_s, 3), "cpu_ms_per_frame": round(1000.0 * cpu / frames, 3) if frames else None,
            "cpu_ms_per_decoded_frame": round(1000.0 * cpu / decoded, 3) if (decoded := sum(r.decoded for r in
                                                                                              self.rows)) else None,
            "wall_s": round(self.wall_s, 2),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "totals": self.totals(), "triton": self.triton, "notes": self.notes,
                "streams": [{**r.__dict__, "cpu_ms_per_frame": None if r.cpu_ms_per_frame is None else
                             round(r.cpu_ms_per_frame, 3)} for r in self.rows]}


# -- process CPU ----------------------------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system seconds of the process and its reaped children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    ticks = sum(int(v) for v in fields[11:15])      # utime, stime, cutime, cstime
    return int(fields[1]), ticks / CLK_TCK


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (Linux /proc)."""
    stats: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _proc_stat(int(d))) is not None:
            stats[int(d)] = st
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo += [c for c, (ppid, _) in stats.items() if ppid == pid]
    return total


# -- the phases -----------------------------------------------------------------------------------------------
def _edgeskd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeskd", *args]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]),
                                                    env.get("PYTHONPATH", "")] if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "200"
    return env


def run_streams(cfg: LoadTestConfig, name: str, extra: list[str], work: Path,
                on_go: Callable[[], None] | None = None) -> Phase:
    """N ``edgeskd stream`` processes; each loads, opens its runner and its video, says so at a
    start gate, and all start pacing together when every one is ready (or has exited): towers run
    for hours, so the N processes' start-up (several CPU-seconds each on a 2-core box) is not part
    of serving them. Their CPU from wait4 (all of it) and from their stats (from the first frame
    on), their stats and JSONL read back. ``on_go``: called just before the start."""
    phase = Phase(name)
    procs: dict[int, tuple[int, subprocess.Popen, Path]] = {}
    gate = work / f"{name}-gate"
    gate.mkdir()
    for i in range(cfg.streams):
        d = work / f"{name}-{i}"
        d.mkdir()
        argv = _edgeskd("stream", cfg.video, *extra, "--realtime", "--no-ceiling", "--smooth", "0.3",
                        "--stats", str(d / "stats.json"), "--jsonl", str(d / "frames.jsonl"),
                        "--start-gate", str(gate))
        if cfg.max_frames:
            argv += ["--max-frames", str(cfg.max_frames)]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(d / "stderr.txt", "wb"),
                             env=_child_env())
        procs[p.pid] = (i, p, d)
    rows: dict[int, StreamRow] = {}

    def reap() -> None:
        """Collect the streams that have exited (each by its own pid: the server, a child too, stays
        unreaped, and Popen.poll, which would reap them without their CPU figures, is not used)."""
        for pid in list(procs):
            try:
                done, status, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:   # reaped elsewhere: no CPU figures, but not lost
                done, status, usage = pid, None, None
            if done == 0:
                continue
            i, p, d = procs.pop(pid)
            p.returncode = os.waitstatus_to_exitcode(status) if status is not None else (p.returncode or 0)
            cpu = usage.ru_utime + usage.ru_stime if usage is not None else 0.0
            rows[i] = _row(i, d, p.returncode, cpu, phase)

    try:
        return _await_streams(cfg, name, phase, procs, gate, rows, reap, on_go)
    except BaseException:   # Ctrl-C, SIGTERM (run_loadtest), a timeout: no stream outlives the load test
        for _, p, _ in procs.values():
            p.terminate()
        for _, p, _ in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        raise


def _await_streams(cfg: "LoadTestConfig", name: str, phase: "Phase", procs: dict, gate: Path, rows: dict,
                   reap: Callable[[], None], on_go: Callable[[], None] | None) -> "Phase":
    deadline = time.monotonic() + cfg.timeout_s

    def ready() -> int:   # the streams still running that wait at the gate (GATE/ready-<pid>)
        pids = (f.name.split("-", 1)[1] for f in gate.glob("ready-*"))
        return sum(1 for pid in pids if pid.isdigit() and int(pid) in procs)

    while procs and ready() < len(procs) and time.monotonic() < deadline:
        reap()   # a stream that fails before the gate (a bad video, no server) is done, not awaited
        time.sleep(0.02)
    if on_go is not None:
        on_go()
    t0 = time.perf_counter()
    (gate / "go").touch()
    while procs:
        reap()
        if not procs:
            break
        if time.monotonic() > deadline:
            for _, p, _ in procs.values():
                p.kill()
            raise ServerError(f"the {name} streams did not finish in {cfg.timeout_s:.0f} s")
        time.sleep(0.05)
    phase.wall_s = time.perf_counter() - t0
    phase.rows = [rows[i] for i in sorted(rows)]
    if phase.rows and all(r.exit_code != 0 and not r.frames for r in phase.rows):
        err = (phase.rows[0].error or "").removeprefix("error: ")
        raise ServerError(f"every {name} stream failed before its first frame: {err}")
    return phase


def _row(i: int, d: Path, rc: int, cpu_s: float, phase: Phase) -> StreamRow:
    err = None
    if rc != 0:
        lines = [ln for ln in (d / "stderr.txt").read_text(errors="replace").splitlines() if ln.strip()]
        err = lines[-1] if lines else f"exit status {rc}"
    try:
        st = json.loads((d / "stats.json").read_text())
    except (OSError, json.JSONDecodeError):
        return StreamRow(i, 0, 0, 0, None, None, cpu_s, rc, err or "no stats written")
    with open(d / "frames.jsonl", encoding="utf-8") as f:
        phase.latencies_ms += [json.loads(line)["latency_ms"] for line in f if line.strip()]
    lat = st.get("latency_ms") or {}
    streaming = (st.get("source") or {}).get("stream_cpu_s")
    return StreamRow(i, st["frames_processed"], st["frames_dropped"], st["frames_decoded"], lat.get("p50"),
                     lat.get("p99"), streaming if streaming is not None else cpu_s, rc, err, cpu_s)


def _start_server(cfg: LoadTestConfig, work: Path) -> tuple[subprocess.Popen, str, str]:
    from edgeskd.serve.server import free_port

    ports = [free_port() for _ in range(3)]
    token = cfg.access_token or secrets.token_urlsafe(16)
    argv = _edgeskd("serve", str(cfg.artifact), "--model", cfg.model or "edgeskd", "--http-port", str(ports[0]),
                    "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--access-token", token,
                    "--threads", str(cfg.threads), "--max-batch-size", str(cfg.max_batch_size),
                    "--queue-delay-us", str(cfg.queue_delay_us))
    log = open(work / "serve.log", "wb")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), start_new_session=True)
    url = f"grpc://127.0.0.1:{ports[1]}"
    _wait_ready(p, url, cfg.model or "edgeskd", work / "serve.log", 120.0)
    return p, url, token


def _wait_ready(p: subprocess.Popen, url: str, model: str, log: Path, timeout_s: float) -> None:
    import tritonclient.grpc as grpcclient

    from edgeskd.serve.remote import parse_server_url

    client = grpcclient.InferenceServerClient(parse_server_url(url).target)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if p.poll() is not None:
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                raise ServerError(f"edgeskd serve exited ({p.returncode}): {lines[-1] if lines else 'no output'}")
            try:
                if client.is_server_ready(client_timeout=2.0) and client.is_model_ready(model, client_timeout=2.0):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.2)
    finally:
        client.close()
    p.terminate()
    raise ServerError(f"edgeskd serve was not ready after {timeout_s:.0f} s; see {log}")


def _stop_server(p: subprocess.Popen) -> int:
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def triton_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Batch-size histogram, mean batch, executions and mean queue time over a phase (Triton statistics)."""
    def parts(s: dict[str, Any]) -> tuple[dict[int, int], int, int, int, int]:
        m = (s.get("model_stats") or [{}])[0]
        hist = {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0)) for b in m.get("batch_stats", [])}
        q = m.get("inference_stats", {}).get("queue", {})
        return hist, int(m.get("inference_count", 0)), int(m.get("execution_count", 0)), int(q.get("count", 0)), \
            int(q.get("ns", 0))

    h0, i0, e0, qc0, qn0 = parts(before)
    h1, i1, e1, qc1, qn1 = parts(after)
    hist = {b: h1.get(b, 0) - h0.get(b, 0) for b in sorted(h1) if h1.get(b, 0) - h0.get(b, 0) > 0}
    execs, infers = e1 - e0, i1 - i0
    return {"batch_size_histogram": hist, "executions": execs, "inferences": infers,
            "mean_batch_size": round(infers / execs, 3) if execs else None,
            "mean_queue_ms": round((qn1 - qn0) / 1e6 / (qc1 - qc0), 3) if qc1 > qc0 else None}


def _server_phase(cfg: LoadTestConfig, work: Path) -> Phase:
    from edgeskd.serve.remote import server_statistics

    own = cfg.server is None
    proc = None
    if own:
        proc, url, token = _start_server(cfg, work)
        model, pid = cfg.model or "edgeskd", proc.pid
    else:
        url, token, pid = cfg.server, cfg.access_token, cfg.server_pid
        if cfg.model is None:
            raise UsageError("with --server give --model NAME: the model the streams run")
        model = cfg.model
    try:
        try:
            before = server_statistics(url, model, token)
        except ServerError as e:
            before = None
            note = str(e)
        cpu0: list[float] = []
        phase = run_streams(cfg, "server", ["--server", url, "--model", model], work,
                            on_go=lambda: cpu0.append(tree_cpu_s(pid)) if pid else None)
        phase.server_cpu_s = (tree_cpu_s(pid) - cpu0[0]) if pid and cpu0 else None
        if before is not None:
            phase.triton = triton_delta(before, server_statistics(url, model, token))
        else:
            phase.notes.append(f"no Triton statistics: {note}")
        if phase.server_cpu_s is None:
            phase.notes.append("server CPU not counted (give --server-pid for a server on this machine)")
    finally:
        if proc is not None:
            rc = _stop_server(proc)
            if rc != 0:
                raise ServerError(f"edgeskd serve exited with {rc} at SIGTERM; see {work / 'serve.log'}")
    return phase


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the load test like Ctrl-C: its streams and the server it started are stopped and
    its work folder removed (the server runs in a session of its own and would outlive it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_loadtest(cfg: LoadTestConfig) -> dict[str, Any]:
    """Both phases; returns the report (``phases`` and the CPU-per-frame ratio)."""
    if not 1 <= cfg.streams <= 64:
        raise UsageError(f"--streams {cfg.streams} must be 1..64")
    if not Path(cfg.artifact).is_file():
        raise UsageError(f"{cfg.artifact} does not exist; give the .onnx (or .engine) the streams run")
    if "://" not in cfg.video and not Path(cfg.video).is_file():
        raise UsageError(f"{cfg.video} does not exist; make one with `edgeskd synth-video OUT.mp4`")
    if cfg.server is not None:
        from edgeskd.serve.remote import parse_server_url

        parse_server_url(cfg.server)
    with _sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="edgeskd-loadtest-") as tmp:
        work = Path(tmp)
        phases = [_server_phase(cfg, work)]
        if cfg.local:
            phases.append(run_streams(cfg, "local", ["--engine", str(cfg.artifact), "--threads", str(cfg.threads)],
                                      work))
    report: dict[str, Any] = {"streams": cfg.streams, "video": cfg.video, "artifact": str(cfg.artifact),
                              "cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
                              "phases": [p.to_dict() for p in phases]}
    if len(phases) == 2:
        a, b = phases[0].totals()["cpu_ms_per_frame"], phases[1].totals()["cpu_ms_per_frame"]
        report["cpu_per_frame_ratio_server_vs_local"] = round(a / b, 3) if a and b else None
    return report
