"""`edgeskd serve` on Triton (PyTriton's bundled tritonserver, the runner in its python backend) and
`stream --server`: a real server on free ports, requests over gRPC and HTTP, statistics behind the
token, bad input, a clean stop on SIGTERM (no workspace, no shared memory left), a server that dies
mid-stream, and no server left when `serve` itself is killed. Skipped without the `serve` extra."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeskd.errors import ServerError, ServerLost, UsageError
from helpers_stream import META, make_onnx, make_video

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install 'edgeskd[serve]')")
pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (pip install 'edgeskd[serve]')")

ROOT = Path(__file__).resolve().parents[1]


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _pytriton_workspaces() -> set[str]:
    home = Path.home() / ".cache" / "pytriton"
    return {p.name for p in home.glob("workspace_*")} if home.is_dir() else set()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("serve") / "tiny.onnx", meta=META.replace(threshold=0.6))


@pytest.fixture(scope="module")
def server(artifact):
    """`serve()` in a thread (stopped through its stop event), with token "tok"."""
    from edgeskd.serve.server import ServeConfig, free_port, serve

    ports = [free_port() for _ in range(3)]
    cfg = ServeConfig(artifact, model="tiny", http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                      access_token="tok", queue_delay_us=20000)
    shm0, ws0 = _shm(), _pytriton_workspaces()
    ready, stop, box = threading.Event(), threading.Event(), {}

    def run() -> None:
        try:
            box["ret"] = serve(cfg, on_ready=lambda info: (box.setdefault("info", info), ready.set()), stop=stop)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            box["error"] = e
            ready.set()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(240) and "error" not in box, box.get("error")   # longer than serve's own wait
    yield {"grpc": f"grpc://127.0.0.1:{ports[1]}", "http": f"127.0.0.1:{ports[0]}", "info": box["info"]}
    stop.set()
    th.join(60)
    assert not th.is_alive() and "error" not in box
    assert not box["info"].workspace.exists()
    assert _shm() - shm0 == set() and _pytriton_workspaces() - ws0 == set()


def test_grpc_and_http_inference_match_local_and_batch(server, artifact):
    import tritonclient.http as httpclient

    from edgeskd.runtime.loader import load_runner
    from edgeskd.serve.remote import RemoteRunner, server_statistics

    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with load_runner(artifact) as local:
        want = local.infer(x)
    remote = RemoteRunner(server["grpc"], "tiny")
    assert remote.metadata.to_dict() == META.replace(threshold=0.6).to_dict() and remote.max_batch == 8
    np.testing.assert_allclose(remote.infer(x), want, atol=1e-5)
    # concurrent one-frame requests are batched by Triton
    threads = [threading.Thread(target=lambda i=i: [remote.infer(x[i % 2:i % 2 + 1]) for _ in range(5)]) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    c = httpclient.InferenceServerClient(server["http"])
    assert c.is_server_ready() and c.is_model_ready("tiny")
    inp = httpclient.InferInput("input", [2, 3, 32, 32], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(c.infer("tiny", [inp]).as_numpy("subclass_logits"), want, atol=1e-5)
    stats = server_statistics(server["grpc"], "tiny", "tok")["model_stats"][0]
    sizes = {int(b["batch_size"]) for b in stats["batch_stats"]}
    assert int(stats["inference_count"]) >= 23 and max(sizes) >= 2, stats["batch_stats"]
    with pytest.raises(ServerError, match="access token"):
        server_statistics(server["grpc"], "tiny", "wrong")


def test_the_runtime_repository_is_a_python_backend_triton_parses(server, artifact, monkeypatch):
    """What `serve` hands Triton: per model a config Triton's own schema parses (the python backend,
    the batcher, the metadata), the stub's model.py and its serve.json; and the model is listed in
    the repository index for a client with the token (`stream --server` without --model)."""
    from edgeskd.serve.remote import RemoteRunner
    from edgeskd.serve.repository import parse_config
    from edgeskd.serve.server import MODEL_PY

    d = server["info"].workspace / "repository" / "tiny"
    cfg = parse_config((d / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.max_batch_size == 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 20000
    assert list(cfg.input[0].dims) == [3, 32, 32] and cfg.input[0].name == "input"
    assert cfg.output[0].name == "subclass_logits" and list(cfg.output[0].dims) == [4]
    assert json.loads(cfg.parameters["edgeskd.threshold"].string_value) == 0.6
    assert (d / "1" / "model.py").read_bytes() == MODEL_PY.read_bytes()
    sj = json.loads((d / "1" / "serve.json").read_text())
    assert sj["artifact"] == str(artifact.resolve()) and (sj["input"], sj["output"]) == ("input", "subclass_logits")
    monkeypatch.setenv("EDGESKD_SERVE_TOKEN", "tok")
    assert RemoteRunner(server["grpc"]).model == "tiny"


def test_requests_in_flight_match_local_and_fail_like_the_synchronous_path(server, artifact):
    """``infer_async``: several requests in flight (on the runner's threads), each answer equal
    to local inference; frames counted once; errors mapped as ``infer`` maps them."""
    from edgeskd.runtime.loader import load_runner
    from edgeskd.serve.remote import RemoteRunner

    x = np.random.default_rng(1).normal(size=(6, 3, 32, 32)).astype(np.float32)
    with load_runner(artifact) as local:
        want = local.infer(x)
    remote = RemoteRunner(server["grpc"], "tiny", depth=2)
    assert remote.pipeline_depth == 2 and RemoteRunner(server["grpc"], "tiny").pipeline_depth == 3
    futures = [remote.infer_async(x[i:i + 1]) for i in range(6)] + [remote.infer_async(x[:4])]
    for i, f in enumerate(futures[:6]):
        got = f.result(timeout=30)
        assert got.dtype == np.float32 and got.shape == (1, 4)
        np.testing.assert_allclose(got, want[i:i + 1], atol=1e-5)
    np.testing.assert_allclose(futures[6].result(timeout=30), want[:4], atol=1e-5)
    assert remote.frames_sent == 10
    with pytest.raises(UsageError, match="does not match"):
        remote.infer_async(np.zeros((1, 3, 16, 16), np.float32))   # bad input raises at the call
    assert remote.frames_sent == 10
    # a batch over the server's limit: refused before any frame went through (ServerError) ...
    fresh = RemoteRunner(server["grpc"], "tiny")
    fresh.max_batch = None          # skip the local check, so the server itself refuses
    big = np.zeros((9, 3, 32, 32), np.float32)
    err = fresh.infer_async(big).exception(timeout=30)
    assert type(err) is ServerError and "refused" in str(err) and "\n" not in str(err)
    with pytest.raises(ServerError, match="refused") as sync_err:
        fresh.infer(big)
    assert type(sync_err.value) is ServerError
    # ... and after frames went through, the same failure means the server is going away (ServerLost)
    remote.max_batch = None
    err = remote.infer_async(big).exception(timeout=30)
    assert type(err) is ServerLost and "after 10 frames" in str(err)
    with pytest.raises(ServerLost):
        remote.infer(big)
    remote.close()
    fresh.close()


def test_bad_requests_are_one_line_errors(server, artifact):
    from edgeskd.serve.remote import RemoteRunner, parse_server_url
    from edgeskd.serve.server import free_port

    with pytest.raises(ServerError, match="not served") as e:
        RemoteRunner(server["grpc"], "nope")
    assert "\n" not in str(e.value)
    with pytest.raises(ServerError, match="unreachable"):
        RemoteRunner(f"grpc://127.0.0.1:{free_port()}", "tiny", timeout_s=2)
    r = RemoteRunner(server["grpc"], "tiny")
    with pytest.raises(UsageError, match="does not match"):
        r.infer(np.zeros((1, 3, 16, 16), np.float32))         # checked here, against the server's size
    with pytest.raises(ServerError, match="refused") as e:
        r._infer_impl(np.zeros((1, 3, 16, 16), np.float32))   # and by the server itself
    assert "\n" not in str(e.value)
    for bad in ("http://h:8000", "grpc://h", "h:0"):
        with pytest.raises(UsageError):
            parse_server_url(bad)
    # the server's ports are taken: one line naming the option
    from edgeskd.serve.server import ServeConfig, serve

    port = int(server["grpc"].rsplit(":", 1)[1])
    with pytest.raises(ServerError, match="--grpc-port"):
        serve(ServeConfig(artifact, grpc_port=port, http_port=free_port(), metrics_port=free_port()))


def test_stream_on_the_server_equals_local(server, artifact, tmp_path, cli):
    video = make_video(tmp_path / "v.mp4", n=12)
    res = cli("stream", "--video", video, "--server", server["grpc"], "--model", "tiny", "--jsonl", tmp_path / "s.jsonl",
              "--stats", tmp_path / "s.json", "--no-ceiling")
    assert res.exit_code == 0, res.output
    assert "triton" in res.output
    # the remote stream keeps requests in flight (the loop of stream.inflight)
    assert json.loads((tmp_path / "s.json").read_text())["source"]["pipeline_depth"] == 3
    res = cli("stream", "--video", video, "--engine", artifact, "--jsonl", tmp_path / "l.jsonl", "--no-ceiling")
    assert res.exit_code == 0, res.output
    a = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        np.testing.assert_allclose(x["probs"], y["probs"], atol=1e-5)
        np.testing.assert_allclose(x["subclass_probs"], y["subclass_probs"], atol=1e-5)
        assert x["state"] == y["state"]
    bad = cli("stream", "--video", video, "--server", server["grpc"], "--model", "nope", "--jsonl", tmp_path / "n.jsonl")
    assert bad.exit_code == 10 and not (tmp_path / "n.jsonl").exists()


def test_serve_stops_cleanly_on_sigterm_and_a_stream_ends_with_the_server(artifact, tmp_path):
    """`edgeskd serve` as a process; a real-time stream runs on it; SIGTERM: the server exits 0 with
    nothing left behind, the stream ends with one line and its outputs cover the frames before."""
    from edgeskd.serve.server import free_port
    from edgeskd.stream.pipeline import StreamConfig, run_stream

    ports = [str(free_port()) for _ in range(3)]
    shm0, ws0, tmp0 = _shm(), _pytriton_workspaces(), set(os.listdir("/tmp"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "edgeskd", "serve", str(artifact), "--model", "tiny", "--http-port",
                             ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ready"):
            break
    assert any("access token" in x for x in lines + [proc.stdout.readline()]), lines
    video = make_video(tmp_path / "v.mp4", n=90, fps=30)
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("res", run_stream(StreamConfig(
        video=str(video), server=f"grpc://127.0.0.1:{ports[1]}", model="tiny", realtime=True, measure_ceiling=False,
        jsonl=tmp_path / "f.jsonl", stats=tmp_path / "s.json", timeout_s=5))))
    th.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    th.join(60)
    assert proc.returncode == 0 and "stopped (SIGTERM)" in rest, rest
    assert _shm() - shm0 == set() and _pytriton_workspaces() - ws0 == set()
    assert not [n for n in set(os.listdir("/tmp")) - tmp0 if n.startswith("edgeskd-serve-")]
    res = box["res"]
    assert res.exit_code == ServerLost.exit_code and "stopped answering" in res.error and "\n" not in res.error
    n = res.stats["frames_processed"]
    assert 0 < n < 90 and len((tmp_path / "f.jsonl").read_text().splitlines()) == n
    assert json.loads((tmp_path / "s.json").read_text())["source"]["server_lost"]


def test_a_killed_serve_leaves_no_triton_running(artifact, tmp_path):
    """SIGKILL to `serve` (no handler runs): its tritonserver, in a session of its own, still gets
    SIGTERM from the kernel (PR_SET_PDEATHSIG) and exits with its stub."""
    from edgeskd.serve.server import free_port

    ports = [str(free_port()) for _ in range(3)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "edgeskd", "serve", str(artifact), "--model", "tiny", "--http-port",
                             ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2], "--access-token", "t"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("ready"):
            break
    kids = [int(x) for x in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert kids, "serve started no tritonserver"
    argv = Path(f"/proc/{kids[0]}/cmdline").read_text().split("\0")
    ws = Path(argv[argv.index("--model-repository") + 1]).parent
    assert ws.name.startswith("edgeskd-serve-")
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{k}").exists() and "Z" not in _state(k) for k in kids):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{k}").exists() and "Z" not in _state(k) for k in kids)
    shutil.rmtree(ws, ignore_errors=True)   # a killed serve cannot remove its workspace; the test does


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_triton_environment_and_its_first_error_line(tmp_path):
    """The stub imports this interpreter's packages (PATH, PYTHONPATH) and the bundled libraries
    (LD_LIBRARY_PATH); a Triton that fails to start is reported by its first error line."""
    from edgeskd.serve.server import _failure, child_env

    env = child_env(tmp_path / "libs", {"PATH": "/usr/bin", "PYTHONPATH": "/x"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[-1] == str(tmp_path / "libs")
    pp = env["PYTHONPATH"].split(os.pathsep)
    assert pp[0] == str(ROOT) and "/x" in pp and any(p.endswith("site-packages") for p in pp)
    log = tmp_path / "t.log"
    stale = 'E0101 00:00:00.000 1 x.cc:1] "stale failure from an earlier run"\n'
    log.write_text(stale + 'I1207 14:46:57.94 1 server.cc:1] "starting"\n'
                   'E1207 14:46:57.9 25003 cuda_driver.cc:1] "CudaDriverHelper has not been initialized."\n'
                   "E1207 14:46:57.942527 25003 model_lifecycle.cc:642] \"failed to load 'm' version 1: Internal: "
                   "ModuleNotFoundError: No module named 'numpy'\\n\\nAt:\\n  model.py(1)\"\n")
    # only this run's lines (tritonserver appends to --log-file), the reason, not the CPU-only CUDA noise
    assert _failure(log, tmp_path / "none", len(stale)) == ("failed to load 'm' version 1: Internal: "
                                                            "ModuleNotFoundError: No module named 'numpy'")
    log.write_text(stale + 'E1207 14:46:57.9 25003 cuda_driver.cc:1] "CudaDriverHelper has not been initialized."\n')
    assert _failure(log, tmp_path / "none") == "stale failure from an earlier run"
    assert _failure(log, tmp_path / "none", len(stale)) == "no error in its log"
    assert _failure(tmp_path / "none", tmp_path / "none2") == "no error in its log"
    log.write_text('E1 1 m.cc:1] "failed to load \'m\' version 1: Internal: CUDA error: out of memory"\n')
    assert _failure(log, tmp_path / "none") == "failed to load 'm' version 1: Internal: CUDA error: out of memory"


def test_stopping_triton_takes_its_whole_session(tmp_path):
    """A stub still starting when Triton stops outlives it and ignores SIGTERM: the stop SIGKILLs
    what is left of tritonserver's session (here: a shell and a child that ignores SIGTERM)."""
    from edgeskd.serve.server import _stop_triton

    proc = subprocess.Popen(["sh", "-c", "(trap '' TERM; sleep 60) & sleep 60"], start_new_session=True)
    time.sleep(0.3)
    _stop_triton(proc)
    time.sleep(0.3)
    assert proc.poll() is not None and _live_members(proc.pid) == []


def test_triton_starts_without_python_in_the_forked_child(tmp_path):
    """The launch runs no Python in a forked copy of this (multi-threaded) process: a copy that does
    clears the other threads' state and ran a finaliser there — a PyAV reformatter that waits for
    its slice threads hung the test server's start that way. Here a thread-local whose finaliser
    blocks forever; the child still starts, takes the death signal and becomes the command."""
    from edgeskd.serve.server import _dying_with_parent

    held = threading.Lock()
    held.acquire()

    class Blocks:
        def __del__(self):
            held.acquire()

    local = threading.local()
    local.x = Blocks()
    box, started, done = {}, threading.Event(), threading.Event()

    def start() -> None:
        box["proc"] = subprocess.Popen(_dying_with_parent(["sh", "-c", "echo $PPID > ppid; exec sleep 60"]),
                                       cwd=tmp_path, start_new_session=True)
        started.set()
        done.wait(60)

    try:
        th = threading.Thread(target=start, daemon=True)
        th.start()
        assert started.wait(30), "the child hung before exec"
        proc = box["proc"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (tmp_path / "ppid").is_file():
            time.sleep(0.05)
        time.sleep(0.1)
        # the launcher became sh (same pid, this process its parent); sh became sleep
        assert int((tmp_path / "ppid").read_text()) == os.getpid()
        assert Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0")[:2] == ["sleep", "60"]
        assert proc.poll() is None
        done.set()   # the thread that started it ends: the kernel sends the death signal
        th.join(10)
        assert proc.wait(10) == -signal.SIGTERM
    finally:
        held.release()
        del local


def _live_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies (a container's pid 1 may not reap)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def test_a_killed_serves_workspace_is_swept_at_the_next_start(tmp_path, monkeypatch):
    from edgeskd.serve.server import WORKSPACE_PREFIX, _sweep_workspaces

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, pid in (("dead", str(dead.pid)), ("alive", str(os.getpid())), ("starting", None)):
        d = tmp_path / f"{WORKSPACE_PREFIX}{name}"
        d.mkdir()
        if pid:
            (d / "serve.pid").write_text(pid)
    (tmp_path / "other").mkdir()
    _sweep_workspaces()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["other", f"{WORKSPACE_PREFIX}alive",
                                                                 f"{WORKSPACE_PREFIX}starting"])


def test_a_plan_without_tensorrt_names_its_model(tmp_path):
    import contextlib

    from edgeskd.errors import BackendUnavailable
    from edgeskd.runtime.engine_file import EngineHeader, write_engine
    from edgeskd.serve.repository import write_triton_repository
    from edgeskd.serve.server import ServeConfig, load_models

    pytest.importorskip("edgeskd.runtime.tensorrt_runner")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except (ImportError, OSError):
        pass
    header = EngineHeader(meta=META, trt_version="10.3.0", compute_capability=(8, 7), input_name="input",
                          output_name="subclass_logits", min_batch=1, max_batch=16)
    write_triton_repository(write_engine(tmp_path / "m.engine", b"PLAN", header), tmp_path / "repo", name="trt")
    with contextlib.ExitStack() as stack, pytest.raises(BackendUnavailable) as e:
        load_models(ServeConfig(tmp_path / "repo"), stack)
    msg = str(e.value)
    assert "model 'trt'" in msg and "--model NAME" in msg and "--backend" not in msg and "\n" not in msg


def test_libpython_path_and_missing_repository_entries(tmp_path):
    import sysconfig

    from edgeskd.errors import ArtifactError
    from edgeskd.serve.server import ServeConfig, libpython_env, load_models

    libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    env = libpython_env({"LD_LIBRARY_PATH": "/opt/x"})
    if libdir and ldlib and (Path(libdir) / ldlib).exists():
        assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/opt/x"]
        assert libpython_env(env)["LD_LIBRARY_PATH"] == env["LD_LIBRARY_PATH"]      # idempotent
    else:
        assert env["LD_LIBRARY_PATH"] == "/opt/x"
    (tmp_path / "repo" / "foreign" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "foreign" / "1" / "model.savedmodel").mkdir()
    import contextlib

    with contextlib.ExitStack() as stack, pytest.raises(ArtifactError, match="not an edgeskd Triton model"):
        load_models(ServeConfig(tmp_path / "repo"), stack)
    bare = make_onnx(tmp_path / "bare.onnx", meta=None)
    (tmp_path / "repo2" / "bare" / "1").mkdir(parents=True)
    (tmp_path / "repo2" / "bare" / "1" / "model.onnx").write_bytes(bare.read_bytes())
    with contextlib.ExitStack() as stack, pytest.raises(ArtifactError, match="model 'bare'.*no edgeskd metadata"):
        load_models(ServeConfig(tmp_path / "repo2"), stack)
    with contextlib.ExitStack() as stack, pytest.raises(UsageError, match="not in"):
        load_models(ServeConfig(tmp_path / "repo2", model="other"), stack)
    (tmp_path / "repo2" / "bare" / "config.pbtxt").write_text('name: "bare"\n')
    with contextlib.ExitStack() as stack, pytest.raises(UsageError, match=r"one model's folder; .*serve .*repo2 --model bare"):
        load_models(ServeConfig(tmp_path / "repo2" / "bare"), stack)


def test_serve_refuses_what_it_cannot_start_with(tmp_path, cli, artifact):
    """Checked before anything starts: an IPv6 --host, a
    --log-file in a folder that does not exist."""
    r = cli("serve", artifact, "--host", "::1")
    assert r.exit_code == 2 and "IPv6" in r.output and "Traceback" not in r.output
    r = cli("serve", artifact, "--log-file", tmp_path / "nope" / "t.log")
    assert r.exit_code == 2 and "does not exist" in r.output and not (tmp_path / "nope").exists()


def test_the_stub_model_processes_pth_files_splits_batches_and_answers_errors_per_request(artifact, tmp_path,
                                                                                          monkeypatch):
    """`triton_model.py` as Triton's stub runs it, with a stand-in for `triton_python_backend_utils`:
    the serving interpreter's .pth files are processed (the stub runs no `site`), the requests of one
    execution run as one batch and each gets its own rows back, a failing batch is an error response
    per request."""
    import importlib
    import types

    from edgeskd.runtime.loader import load_runner

    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, data):
            self.name, self.data = name, data

        def as_numpy(self):
            return self.data

    class Response:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors, error

    pb.Tensor, pb.InferenceResponse, pb.TritonError = Tensor, Response, str
    pb.get_input_tensor_by_name = lambda request, name: request[name]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    tm = importlib.import_module("edgeskd.serve.triton_model")

    site_dir, extra = tmp_path / "site", tmp_path / "from-pth"
    site_dir.mkdir()
    extra.mkdir()
    (site_dir / "extra.pth").write_text(str(extra) + "\n")
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "serve.json").write_text(json.dumps(
        {"artifact": str(artifact), "device": "auto", "threads": 1, "input": "input", "output": "subclass_logits",
         "site_dirs": [str(site_dir)]}))
    monkeypatch.setattr(sys, "path", list(sys.path))
    model = tm.TritonPythonModel()
    model.initialize({"model_repository": str(tmp_path / "m"), "model_version": "1"})
    assert str(extra) in sys.path
    x = np.random.default_rng(2).normal(size=(6, 3, 32, 32)).astype(np.float32)
    with load_runner(artifact) as local:
        want = local.infer(x)
    out = model.execute([{"input": Tensor("input", x[:1])}, {"input": Tensor("input", x[1:4])},
                         {"input": Tensor("input", x[4:])}])
    assert [r.error for r in out] == [None] * 3
    got = [r.output_tensors[0] for r in out]
    assert [t.name for t in got] == ["subclass_logits"] * 3 and [len(t.data) for t in got] == [1, 3, 2]
    np.testing.assert_allclose(np.concatenate([t.data for t in got]), want, atol=1e-5)
    bad = model.execute([{"input": Tensor("input", x[:1])}, {"input": Tensor("input", np.zeros((1, 3, 8, 8), np.float32))}])
    assert all(r.error and r.error.startswith("edgeskd runner:") and "\n" not in r.error for r in bad)
    model.finalize()
    sys.modules.pop("edgeskd.serve.triton_model", None)   # imported against the stand-in
