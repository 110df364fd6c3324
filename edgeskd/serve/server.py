"""``edgeskd serve REPO|ARTIFACT``: Triton Inference Server (through PyTriton) running edgeskd's own
runners (ONNX Runtime on CPU, TensorRT on GPU) with dynamic batching.

PyTriton 0.7 bundles a real ``tritonserver`` with the python backend only: Triton receives the
requests, batches them across clients (``max_batch_size``, ``max_queue_delay_microseconds``) and
hands each batch to an inference function in this process, which calls the runner. The model config
carries the artifact's metadata as ``parameters`` (as ``edgeskd export --format triton`` writes
them), so ``RemoteRunner`` / ``edgeskd stream --server`` need nothing else.

What this module handles around PyTriton:

* a Python whose ``libpython`` is not the system's (pyenv): the python backend's stub then loads the
  wrong one and fails (``'_thread.RLock' object has no attribute '_recursion_count'``); the stub's
  ``LD_LIBRARY_PATH`` gets ``sysconfig``'s ``LIBDIR`` first (``libpython_env``);
* SIGINT *and* SIGTERM stop the server cleanly: the workspace (a folder this module owns) and the
  python backend's shared memory are removed;
* ports: each is checked free before the start (one line naming the option to change);
* the statistics / model-repository endpoints are restricted to an access token (``--access-token``
  or $EDGESKD_SERVE_TOKEN; generated when neither is given and printed once).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.errors import ArtifactError, ServerError, UsageError
from edgeskd.serve.remote import TOKEN_ENV
from edgeskd.serve.repository import check_max_batch_size, meta_parameters, read_repository

WORKSPACE_PREFIX = "edgeskd-serve-"


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
    queue_delay_us: int = 10_000   # CPU python backend: ~3 ms per execution; fewer, larger batches
    device: str = "auto"                # auto | cpu | cuda:N
    threads: int = 1
    log_file: Path | None = None        # tritonserver's log (default: in the workspace, removed at the stop)


@dataclass
class ServedModel:
    name: str
    runner: Any
    source: Path
    input_name: str
    output_name: str
    max_batch_size: int


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
    if ":" in host:   # PyTriton builds http://HOST:PORT for its own client, which an IPv6 literal breaks
        raise UsageError(f"--host {host}: IPv6 addresses are not supported by the Triton server PyTriton runs; "
                         "give an IPv4 address (127.0.0.1, 0.0.0.0) or a host name")
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


def _import_pytriton() -> Any:
    try:
        import pytriton.triton as pt
    except ImportError:
        raise UsageError("edgeskd serve needs PyTriton: pip install 'edgeskd[serve]' (Linux x86-64/arm64)") from None
    for name in ("pytriton", "tritonclient"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return pt


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
    return load_runner(path, threads=threads, device=device if device.startswith("cuda") else None)


def load_models(cfg: ServeConfig, stack: contextlib.ExitStack) -> list[ServedModel]:
    """The runners to serve: every model of a repository (its newest version) or the one artifact."""
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
            runner = _runner_for(path, sidecar, cfg.device, cfg.threads, stack)
        except ArtifactError as e:
            raise ArtifactError(f"model {name!r}: {e}") from None
        stack.enter_context(runner)
        limit = runner.max_batch or cfg.max_batch_size
        mb = min(cfg.max_batch_size, int(limit))
        inp, out = _io_names(runner, path)
        models.append(ServedModel(name, runner, path, inp, out, mb))
    return models


def _io_names(runner: Any, path: Path) -> tuple[str, str]:
    art = getattr(runner, "artifact", None)
    if art is not None and hasattr(art, "input_name"):
        return art.input_name, art.output_name
    header = getattr(runner, "header", None)
    if header is not None:
        return header.input_name, header.output_name
    return "input", runner.metadata.output


def infer_function(runner: Any, input_name: str, output_name: str) -> Callable[..., dict[str, np.ndarray]]:
    """The batched inference callable PyTriton calls: {input: (N,3,H,W)} → {output: (N,K) logits}."""
    from pytriton.decorators import batch

    lock = threading.Lock()

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        with lock:
            return {output_name: runner.infer(inputs[input_name])}

    return infer


def _bind(triton: Any, m: ServedModel, cfg: ServeConfig) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    meta = m.runner.metadata
    triton.bind(
        model_name=m.name,
        infer_func=infer_function(m.runner, m.input_name, m.output_name),
        inputs=[Tensor(name=m.input_name, dtype=np.float32, shape=(3, *meta.input_size))],
        outputs=[Tensor(name=m.output_name, dtype=np.float32, shape=(meta.num_outputs,))],
        config=ModelConfig(max_batch_size=m.max_batch_size,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=cfg.queue_delay_us)),
        strict=True,
    )
    # the artifact's metadata into the model config's parameters (where RemoteRunner reads it): PyTriton
    # 0.7 has no public option for it, its model config's backend_parameters become `parameters`
    model = next((x for x in triton._model_manager.models if x.model_name == m.name), None)
    if model is None or not hasattr(model, "_get_triton_model_config"):
        raise ServerError("this PyTriton version cannot carry model parameters; install nvidia-pytriton 0.7")
    model._get_triton_model_config().backend_parameters.update(meta_parameters(meta))


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


def _shm_names() -> set[str]:
    with contextlib.suppress(OSError):
        return set(os.listdir("/dev/shm"))
    return set()


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
    pt = _import_pytriton()
    token = cfg.access_token or os.environ.get(TOKEN_ENV) or ""
    generated = not token
    token = token or secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack, _Stop() as stopper:
        models = load_models(cfg, stack)
        for m in models:             # warm the runners before the server takes requests
            m.runner.infer(np.zeros((1, 3, *m.runner.metadata.input_size), np.float32))
        _set_child_env(stack)
        ws = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX))
        stack.callback(shutil.rmtree, ws, True)
        shm_before = _shm_names()
        stack.callback(_remove_new_shm, shm_before)
        info = ServerInfo(models, f"grpc://{cfg.host}:{cfg.grpc_port}", f"http://{cfg.host}:{cfg.http_port}",
                          f"http://{cfg.host}:{cfg.metrics_port}/metrics", token, generated, ws)
        t0 = time.perf_counter()
        triton = pt.Triton(
            config=pt.TritonConfig(http_address=cfg.host, http_port=cfg.http_port, grpc_address=cfg.host,
                                   grpc_port=cfg.grpc_port, metrics_address=cfg.host, metrics_port=cfg.metrics_port,
                                   exit_timeout_secs=5, strict_readiness=True,
                                   log_file=cfg.log_file or (ws / "tritonserver.log")),
            workspace=ws / "pytriton",
            security_config=pt.TritonSecurityConfig(access_token=token),
        )
        stack.callback(triton.stop)
        _quiet(triton)
        for m in models:
            _bind(triton, m, cfg)
        _start(triton, stopper)
        if stopper.event.is_set():   # Ctrl-C / SIGTERM while starting: stop, without announcing "ready"
            return stopper.signal
        info.started_s = time.perf_counter() - t0
        if on_ready is not None:
            on_ready(info)
        wait = stop if stop is not None else stopper.event
        while not (wait.wait(0.5) or stopper.event.is_set()):
            if not triton.is_alive():
                raise ServerError("the Triton server process exited unexpectedly; run again (a port taken after "
                                  "the check, or out of memory?)")
        return stopper.signal


def _set_child_env(stack: contextlib.ExitStack) -> None:
    """LD_LIBRARY_PATH for tritonserver and the python backend stub (inherited from this process);
    the previous value comes back when the server stops."""
    env = libpython_env()
    old = os.environ.get("LD_LIBRARY_PATH")
    if env.get("LD_LIBRARY_PATH", old) == old:
        return
    os.environ["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"]

    def restore() -> None:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old

    stack.callback(restore)


def _quiet(triton: Any) -> None:
    """tritonserver's own console output (it echoes every line to stdout) off: its log goes to the
    log file; the lines stay readable for error messages."""
    with contextlib.suppress(Exception):
        triton._initialize_server()
        triton._triton_server._verbose = False


def _start(triton: Any, stopper: _Stop) -> None:
    try:
        triton.run()
    except Exception as e:  # noqa: BLE001 - PyTriton raises bare exceptions (TimeoutError, RuntimeError...)
        raise ServerError(f"Triton did not start: {' '.join(str(e).split()) or type(e).__name__}") from None
    if stopper.event.is_set():
        return
    if not triton.is_alive():
        raise ServerError("Triton started but exited at once; check the ports and run again")


def _remove_new_shm(before: set[str]) -> None:
    """Shared memory segments of this server's python backend left by an unclean stop."""
    pid_tag = f"pytrtion{os.getpid()}-"
    for name in _shm_names() - before:
        if name.startswith(pid_tag):
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")
