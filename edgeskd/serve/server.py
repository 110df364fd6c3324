"""``edgeskd serve REPO|ARTIFACT``: NVIDIA Triton Inference Server running edgeskd's own runners
(ONNX Runtime on CPU, TensorRT on GPU) with dynamic batching.

The server is the ``tritonserver`` that PyTriton 0.7 bundles (python backend only). ``serve`` writes a
runtime model repository in its workspace: per model a ``config.pbtxt`` (the python backend, the
dynamic batcher, the artifact's metadata as ``parameters``, as ``edgeskd export --format triton``
writes them) and ``1/model.py`` (``edgeskd.serve.triton_model``), which loads the runner inside
Triton's python-backend stub. Triton receives the requests, batches them across clients
(``max_batch_size``, ``max_queue_delay_microseconds``) and hands each batch to the runner in that
process. ``RemoteRunner`` / ``edgeskd stream --server`` read the metadata from the model config.

Why not PyTriton's ``Triton.bind``: its inference function runs in a third process that the stub
reaches through ZeroMQ and a shared-memory tensor store. On a 2-core CPU that hop cost 6.0 ms of CPU
per batch (the stub 2.6, the proxy 2.5, tritonserver 0.9) against 1.9 ms with the runner in the
stub, and 8 paced 720p streams dropped frames behind it.

What this module handles around Triton:

* a Python whose ``libpython`` is not the system's (pyenv): the stub would load the wrong one and
  fail (``'_thread.RLock' object has no attribute '_recursion_count'``, pytriton #51); its
  ``LD_LIBRARY_PATH`` gets ``sysconfig``'s ``LIBDIR`` first (``libpython_env``), its ``PATH`` and
  ``PYTHONPATH`` this interpreter's, so it imports the same packages;
* SIGINT *and* SIGTERM stop the server cleanly: tritonserver runs in a session of its own (a
  terminal's Ctrl-C reaches only ``serve``) and dies with ``serve``; the workspace (a folder this
  module owns) and the python backend's shared memory are removed;
* ports: each is checked free before the start (one line naming the option to change);
* the statistics / model-repository endpoints are restricted to an access token (``--access-token``
  or $EDGESKD_SERVE_TOKEN; generated when neither is given and printed once).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.errors import ArtifactError, BackendUnavailable, ServerError, UsageError
from edgeskd.serve.remote import TOKEN_ENV
from edgeskd.serve.repository import check_max_batch_size, read_repository

WORKSPACE_PREFIX = "edgeskd-serve-"
MODEL_PY = Path(__file__).with_name("triton_model.py")   # imported only inside Triton's stub
SERVE_FILE = "serve.json"                                 # triton_model.SERVE_FILE
ACCESS_TOKEN_HEADER = "triton-access-token"   # Triton's restricted-endpoint header (gRPC: "triton-grpc-protocol-" + it)


@dataclass
class ServeConfig:
    source: Path                        # a Triton repository written by edgeskd, or one .onnx / .engine
    model: str | None = None            # the model name (artifact) / the one model to serve (repository)
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    access_token: str | None = None
    max_batch_size: int = 8
    queue_delay_us: int = 10_000   # CPU python backend: ~2 ms per execution; fewer, larger batches
    device: str = "auto"                # auto | cpu | cuda:N
    threads: int = 1
    log_file: Path | None = None        # tritonserver's log (default: in the workspace, removed at the stop)


@dataclass
class ServedModel:
    name: str
    runner: Any                         # loaded once here to check the model (closed; the stub runs its own)
    source: Path
    input_name: str
    output_name: str
    max_batch_size: int
    artifact: Path | None = None        # what the stub loads (a .plan's engine file lives in the workspace)


@dataclass
class ServerInfo:
    """What a running server tells its caller (printed by the CLI)."""

    models: list[ServedModel]
    grpc_url: str
    http_url: str
    metrics_url: str
    access_token: str
    token_generated: bool
    workspace: Path
    started_s: float = 0.0
    notes: list[str] = field(default_factory=list)


# -- environment -------------------------------------------------------------------------------------------
def libpython_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` with ``sysconfig``'s LIBDIR first on LD_LIBRARY_PATH when this Python is linked
    against a shared libpython that lives there (pyenv, python.org builds): the python backend's stub
    must load *this* libpython, not the system's (pytriton #51)."""
    env = dict(os.environ if environ is None else environ)
    libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not ldlib or not (Path(libdir) / ldlib).exists():
        return env
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if not parts or parts[0] != libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in parts if p != libdir]])
    return env


def check_ports(host: str, ports: dict[str, int]) -> None:
    """UsageError naming the option when a port is out of range, repeated, or already in use."""
    if ":" in host:   # the readiness probe and the printed URLs take HOST:PORT, which an IPv6 literal breaks
        raise UsageError(f"--host {host}: IPv6 addresses are not supported by edgeskd serve; give an IPv4 address "
                         "(127.0.0.1, 0.0.0.0) or a host name")
    seen: dict[int, str] = {}
    for opt, port in ports.items():
        if not 0 < port < 65536:
            raise UsageError(f"{opt} {port} must be a port number 1..65535")
        if port in seen:
            raise UsageError(f"{opt} and {seen[port]} are both {port}; give each its own port")
        seen[port] = opt
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ServerError(f"port {port} on {host} is in use (another server?); choose another {opt}") \
                        from None
                raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); check --host") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- models ---------------------------------------------------------------------------------------------------
def _runner_for(path: Path, sidecar: dict[str, Any] | None, device: str, threads: int, stack: contextlib.ExitStack):
    from edgeskd.runtime.loader import load_runner

    if path.suffix == ".plan":
        if not sidecar or not sidecar.get("engine_header"):
            raise ArtifactError(f"{path} has no edgeskd engine header ({path.parent / 'edgeskd.json'}); write the "
                                "repository with `edgeskd export --format triton`")
        from edgeskd.runtime.engine_file import EngineHeader, write_engine

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeskd-plan-")))
        header = EngineHeader.from_dict(sidecar["engine_header"], str(path))
        path = write_engine(tmp / "model.engine", path.read_bytes(), header)
    if path.suffix == ".onnx" and device.startswith("cuda"):
        raise UsageError("edgeskd serve runs ONNX on the CPU; for a GPU serve a TensorRT engine "
                         "(`edgeskd build-engine`), or the repository in NVIDIA's Triton container")
    return load_runner(path, threads=threads, device=device if device.startswith("cuda") else None), path


def load_models(cfg: ServeConfig, stack: contextlib.ExitStack) -> list[ServedModel]:
    """The models to serve: every model of a repository (its newest version) or the one artifact. Each
    runner is loaded and run once here (a model that cannot load is one line before the server
    starts), then closed."""
    src = Path(cfg.source)
    if not src.exists():
        raise UsageError(f"{src} does not exist; give a Triton repository (`edgeskd export --format triton`) or "
                         "an .onnx / .engine artifact")
    if src.is_dir():
        items = [(e.name, e.model_path, e.sidecar) for e in read_repository(src, cfg.model)]
    else:
        from edgeskd.serve.repository import model_name_for, read_artifact

        items = [(model_name_for(read_artifact(src), cfg.model), src, None)]
    models = []
    for name, path, sidecar in items:
        try:
            runner, runtime_path = _runner_for(path, sidecar, cfg.device, cfg.threads, stack)
            with runner:
                runner.infer(np.zeros((1, 3, *runner.metadata.input_size), np.float32))
        except ArtifactError as e:
            raise ArtifactError(f"model {name!r}: {e}") from None
        except BackendUnavailable as e:   # a .plan / .engine where TensorRT or its GPU is missing
            raise BackendUnavailable(f"model {name!r} needs TensorRT on a GPU, which this machine lacks "
                                     f"({str(e).split(';')[0]}); serve it on a GPU machine, or serve only the ONNX "
                                     "models with --model NAME") from None
        limit = runner.max_batch or cfg.max_batch_size
        mb = min(cfg.max_batch_size, int(limit))
        inp, out = _io_names(runner, path)
        models.append(ServedModel(name, runner, path, inp, out, mb, runtime_path))
    return models


def _io_names(runner: Any, path: Path) -> tuple[str, str]:
    art = getattr(runner, "artifact", None)
    if art is not None and hasattr(art, "input_name"):
        return art.input_name, art.output_name
    header = getattr(runner, "header", None)
    if header is not None:
        return header.input_name, header.output_name
    return "input", runner.metadata.output


# -- the server -----------------------------------------------------------------------------------------------
class _Stop:
    """SIGINT and SIGTERM set an event (the main thread then stops the server); restored on exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _triton_dist() -> dict[str, Path]:
    """The bundled server's files: the tritonserver binary, the python backend, the stub built for
    this Python, the libraries they link."""
    try:
        from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path
    except ImportError:
        raise UsageError("edgeskd serve needs PyTriton: pip install 'edgeskd[serve]' (Linux x86-64/arm64)") from None
    dist = get_root_module_path() / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    files = {"bin": dist / "bin" / "tritonserver", "backend": dist / "backends" / "python",
             "stub": get_stub_path(version), "caches": dist / "caches", "libs": Path(get_libs_path())}
    if not files["bin"].is_file() or not files["backend"].is_dir():
        raise UsageError(f"PyTriton's bundled Triton server is missing from {dist}; reinstall: "
                         "pip install --force-reinstall 'edgeskd[serve]'")
    if not files["stub"].is_file():
        raise UsageError(f"PyTriton has no Triton python-backend stub for Python {version}; run edgeskd on a "
                         "Python it supports (3.8-3.13)")
    return files


def _backend_dir(ws: Path, dist: dict[str, Path]) -> Path:
    """``ws/backends/python``: the bundled python backend with the stub for this Python (links)."""
    d = ws / "backends" / "python"
    d.mkdir(parents=True)
    for f in dist["backend"].iterdir():
        if f.is_file():
            (d / f.name).symlink_to(f)
    (d / "triton_python_backend_stub").symlink_to(dist["stub"])
    return ws / "backends"


def _write_model(repo: Path, m: ServedModel, cfg: ServeConfig) -> None:
    """``repo/<name>/config.pbtxt``, ``labels.txt`` and ``1/model.py`` + ``1/serve.json``."""
    from edgeskd.serve.repository import ConfigSpec, config_text, read_artifact

    a = read_artifact(m.artifact or m.source)
    d = repo / m.name
    (d / "1").mkdir(parents=True)
    meta = m.runner.metadata
    (d / "config.pbtxt").write_text(config_text(ConfigSpec(m.name, a, m.max_batch_size, queue_delay_us=cfg.queue_delay_us,
                                                           python_backend=True)), encoding="utf-8")
    names = meta.subclass_names if meta.output == "subclass_logits" else meta.class_names
    (d / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    shutil.copyfile(MODEL_PY, d / "1" / "model.py")
    (d / "1" / SERVE_FILE).write_text(json.dumps(
        {"artifact": str(Path(m.artifact or m.source).resolve()), "device": cfg.device, "threads": cfg.threads,
         "input": m.input_name, "output": m.output_name, "site_dirs": _site_dirs()}), encoding="utf-8")


def _site_dirs() -> list[str]:
    """This interpreter's site-packages folders: the stub's embedded Python runs no ``site``, so it
    processes their .pth files itself (editable installs, path hooks)."""
    import site

    dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def child_env(dist_libs: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """tritonserver's and the stub's environment: libpython and the bundled libraries on
    LD_LIBRARY_PATH, this interpreter first on PATH and its import path on PYTHONPATH (the stub's
    embedded Python finds its packages through them)."""
    env = libpython_env(environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [env.get("LD_LIBRARY_PATH", ""), str(dist_libs)] if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    import edgeskd

    paths = [str(Path(edgeskd.__file__).resolve().parents[1])] + [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return env


# Runs in the child before tritonserver: the kernel sends it SIGTERM when the thread that started it
# dies (Linux prctl PR_SET_PDEATHSIG), so a killed ``serve`` leaves no server behind; if ``serve``
# died before the call took effect, it exits. Then it becomes tritonserver (same pid).
_LAUNCH = """import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _dying_with_parent(args: list[str]) -> list[str]:
    """``args`` behind a small launcher that ties the child's life to this process (see ``_LAUNCH``),
    on Linux; ``args`` unchanged elsewhere.

    Not a ``preexec_fn``: that runs Python in a forked copy of this multi-threaded process, and the
    copy can hang before it ever starts tritonserver (it clears the other threads' state, and a
    PyAV reformatter held in one waits there forever for its slice threads, which the copy lacks)."""
    if not sys.platform.startswith("linux"):
        return args
    return [sys.executable, "-I", "-S", "-c", _LAUNCH, str(os.getpid()), *args]


def _triton_args(cfg: ServeConfig, dist: dict[str, Path], ws: Path, backends: Path, token: str, shm_prefix: str,
                 log: Path) -> list[str]:
    restricted = f"shared-memory,model-repository,statistics,trace,logging:{ACCESS_TOKEN_HEADER}={token}"
    return [str(dist["bin"]), "--model-repository", str(ws / "repository"), "--backend-directory", str(backends),
            "--cache-directory", str(dist["caches"]), "--http-address", cfg.host, "--http-port", str(cfg.http_port),
            "--grpc-address", cfg.host, "--grpc-port", str(cfg.grpc_port), "--metrics-address", cfg.host,
            "--metrics-port", str(cfg.metrics_port), "--log-file", str(log), "--exit-timeout-secs", "5",
            "--strict-readiness", "true", "--backend-config", f"python,shm-region-prefix-name={shm_prefix}",
            "--backend-config", "python,shm-default-byte-size=4194304",
            "--backend-config", "python,shm-growth-byte-size=1048576",
            "--grpc-restricted-protocol", restricted, "--http-restricted-api", restricted]


def serve(cfg: ServeConfig, *, on_ready: Callable[[ServerInfo], None] | None = None,
          stop: threading.Event | None = None) -> int | None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set); returns the signal number that stopped it."""
    check_max_batch_size(cfg.max_batch_size)
    if not 0 <= cfg.queue_delay_us <= 1_000_000:
        raise UsageError(f"--queue-delay-us {cfg.queue_delay_us} must be 0..1,000,000")
    if cfg.log_file is not None and not Path(cfg.log_file).parent.is_dir():
        raise UsageError(f"--log-file {cfg.log_file}: folder {Path(cfg.log_file).parent} does not exist; create it "
                         "or give another path")
    check_ports(cfg.host, {"--http-port": cfg.http_port, "--grpc-port": cfg.grpc_port,
                           "--metrics-port": cfg.metrics_port})
    dist = _triton_dist()
    token = cfg.access_token or os.environ.get(TOKEN_ENV) or ""
    generated = not token
    token = token or secrets.token_urlsafe(24)
    with _Stop() as stopper, contextlib.ExitStack() as stack:   # a second signal cannot cut the cleanup short
        models = load_models(cfg, stack)
        _sweep_workspaces()
        ws = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX))
        stack.callback(shutil.rmtree, ws, True)
        for m in models:
            _write_model(ws / "repository", m, cfg)
        backends = _backend_dir(ws, dist)
        shm_prefix = f"edgeskd{os.getpid()}-{secrets.token_hex(4)}"
        stack.callback(_remove_shm, shm_prefix)
        log = Path(cfg.log_file) if cfg.log_file else ws / "tritonserver.log"
        log_offset = log.stat().st_size if log.is_file() else 0   # tritonserver appends to --log-file
        (ws / "serve.pid").write_text(str(os.getpid()))
        info = ServerInfo(models, f"grpc://{cfg.host}:{cfg.grpc_port}", f"http://{cfg.host}:{cfg.http_port}",
                          f"http://{cfg.host}:{cfg.metrics_port}/metrics", token, generated, ws)
        t0 = time.perf_counter()
        with open(ws / "tritonserver.out", "wb") as out:
            proc = subprocess.Popen(_dying_with_parent(_triton_args(cfg, dist, ws, backends, token, shm_prefix, log)),
                                    env=child_env(dist["libs"]), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(_stop_triton, proc)
        _wait_ready(proc, cfg, [m.name for m in models], stopper,
                    lambda: _failure(log, ws / "tritonserver.out", log_offset))
        if stopper.event.is_set():   # Ctrl-C / SIGTERM while starting: stop, without announcing "ready"
            return stopper.signal
        info.started_s = time.perf_counter() - t0
        if on_ready is not None:
            on_ready(info)
        wait = stop if stop is not None else stopper.event
        while not (wait.wait(0.5) or stopper.event.is_set()):
            if proc.poll() is not None:
                raise ServerError(f"the Triton server process exited unexpectedly "
                                  f"({_failure(log, ws / 'tritonserver.out', log_offset)}); "
                                  "run again")
        return stopper.signal


# lines tritonserver writes on every machine without a GPU: never the reason it failed
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "cuda", "CUDA", "GPU")
_REASONS = ("failed to load", "Failed to initialize Python stub", "failed to start", "already in use", "error:")


def _failure(log: Path, out: Path, log_offset: int = 0) -> str:
    """Why tritonserver failed, in one line: the first error line of this run (its log from
    ``log_offset`` on, else its console) that names a reason, else the first that is not the
    CPU-only noise about CUDA and NVML."""
    lines: list[str] = []
    for f, start in ((log, log_offset), (out, 0)):
        with contextlib.suppress(OSError), open(f, "rb") as fh:
            fh.seek(start)
            lines += fh.read().decode(errors="replace").splitlines()
    errors = []
    for line in lines:
        if line.startswith("E") and "] " in line:
            text = line.split("] ", 1)[1].strip().strip('"').split("\\n")[0]
        elif line.lower().startswith("error"):
            text = line
        else:
            continue
        text = " ".join(text.split())
        if text:
            errors.append(text)
    reasons = [t for t in errors if any(r in t for r in _REASONS)]   # "failed to load ...: CUDA out of memory" counts
    rest = [t for t in errors if not any(n in t for n in _NOISE)]
    return (reasons or rest or ["no error in its log"])[0]


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def _wait_ready(proc: subprocess.Popen, cfg: ServeConfig, names: list[str], stopper: _Stop, why: Callable[[], str],
                timeout_s: float = 180.0) -> None:
    """Until every model answers ``/v2/models/NAME/ready`` (ServerError when the server exits first or
    takes longer than ``timeout_s``)."""
    import urllib.error
    import urllib.request

    base = f"http://{_probe_host(cfg.host)}:{cfg.http_port}/v2/models/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # this machine: never a proxy
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending and not stopper.event.is_set():
        if proc.poll() is not None:
            raise ServerError(f"Triton did not start: {why()}")
        try:
            with opener.open(base + pending[0] + "/ready", timeout=2.0) as r:
                if r.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"Triton was not ready after {timeout_s:.0f} s ({why()}); see --log-file")
        stopper.event.wait(0.1)


def _stop_triton(proc: subprocess.Popen) -> None:
    """SIGTERM (Triton unloads the models and exits; SIGKILL after 30 s), then SIGKILL to whatever of
    its session is left: a python-backend stub still starting when Triton stopped outlives it and
    ignores SIGTERM."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(OSError):   # tritonserver leads its own session: the group id is its pid
        os.killpg(proc.pid, signal.SIGKILL)


def _sweep_workspaces() -> None:
    """Remove the workspaces of ``serve`` processes that were killed (their pid is gone)."""
    for d in Path(tempfile.gettempdir()).glob(WORKSPACE_PREFIX + "*"):
        try:
            pid = int((d / "serve.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):   # not ours to judge: no pid file yet, another user's, unreadable
            continue


def _remove_shm(prefix: str) -> None:
    """Shared memory segments of this server's python backend left by an unclean stop."""
    for seg in Path("/dev/shm").glob(prefix + "*"):
        with contextlib.suppress(OSError):
            seg.unlink()
