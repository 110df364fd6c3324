"""``RemoteRunner``: the runtime's Runner protocol over a Triton server (gRPC, tritonclient).

``infer(batch)`` sends the preprocessed float32 batch to the server and returns the model's logits;
``metadata`` comes from the model config's ``parameters`` (the ``edgeskd.*`` keys that
``edgeskd export --format triton`` and ``edgeskd serve`` write). Everything after ``infer`` (class
probabilities, smoothing, frame states, overlay, stats) is the local pipeline's, unchanged; the
input checks are the base class's, against the input size the server reports.

``infer_async(batch)`` returns a ``concurrent.futures.Future`` at once: the request runs ``infer``
on one of ``pipeline_depth`` (3) threads of the runner's own, so a stream preprocesses and sends the
next frame while the previous one is on the server; its errors are ``infer``'s, through the future.
(tritonclient's callback ``async_infer`` was measured against it: gRPC starts a new channel-polling
thread whenever no call is in flight, which at 30 fps with ~20 ms round trips is every request, and
cost 0.2-0.3 ms more CPU per request than a blocking call on a kept thread, on a 2-core x86 box.)

Failures are one-line ``ServerError``s: server unreachable, a model it does not serve, a server that
stops answering mid-stream (``ServerLost``; the stream finishes its outputs up to that frame).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeskd.errors import ServerError, ServerLost, UsageError
from edgeskd.runtime.base import Runner
from edgeskd.serve.repository import meta_from_parameters

# the header Triton's restricted endpoints check: HTTP takes the name as is, gRPC with a prefix
ACCESS_HEADER = "triton-grpc-protocol-triton-access-token"
TOKEN_ENV = "EDGESKD_SERVE_TOKEN"


@dataclass(frozen=True)
class ServerURL:
    host: str
    port: int

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"grpc://{self.target}"


def parse_server_url(text: str) -> ServerURL:
    """``grpc://HOST:PORT`` (or ``HOST:PORT``) → ServerURL; http(s) and other schemes are refused."""
    t = text.strip()
    if "://" in t:
        scheme, t = t.split("://", 1)
        if scheme.lower() != "grpc":
            raise UsageError(f"--server {text!r}: give the server's gRPC address, grpc://HOST:PORT (Triton's "
                             "default gRPC port is 8001)")
    host, sep, port = t.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--server {text!r} must be grpc://HOST:PORT, e.g. grpc://127.0.0.1:8001")
    return ServerURL(host.strip("[]"), int(port))


def _client(url: ServerURL) -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise UsageError("--server needs tritonclient: pip install 'edgeskd[serve]'") from None
    return grpcclient.InferenceServerClient(url.target)


def _message(e: BaseException) -> str:
    msg = getattr(e, "message", None)
    text = msg() if callable(msg) else str(e)
    return " ".join(str(text).split())


def _unreachable(e: BaseException) -> bool:
    m = _message(e).lower()
    status = getattr(e, "status", None)
    code = status() if callable(status) else ""
    return "unavailable" in str(code).lower() or "failed to connect" in m or "connection refused" in m \
        or "socket closed" in m or "deadline" in m or "unavailable" in m


class RemoteRunner(Runner):
    """``RemoteRunner("grpc://host:8001", "student")``: a Runner whose model runs on a Triton server."""

    backend = "triton"

    def __init__(self, server: str | ServerURL, model: str | None = None, *, timeout_s: float = 10.0,
                 version: str = "", depth: int = 3) -> None:
        if depth < 1:
            raise UsageError(f"pipeline depth {depth} must be >= 1")
        self.pipeline_depth = int(depth)   # requests a stream keeps in flight (infer_async)
        self.url = server if isinstance(server, ServerURL) else parse_server_url(server)
        self.timeout_s = float(timeout_s)
        self.version = version
        self._client = _client(self.url)
        self.model = model or self._only_model()
        cfg = self._config()
        meta = meta_from_parameters({k: v.string_value for k, v in cfg.parameters.items()},
                                    source=f"model {self.model!r} on {self.url}")
        super().__init__(meta, max_batch=int(cfg.max_batch_size) or None)
        self.input_name = cfg.input[0].name
        self.output_name = cfg.output[0].name
        dims = tuple(int(d) for d in cfg.input[0].dims)
        if dims != (3, *meta.input_size):
            raise ServerError(f"model {self.model!r} on {self.url} takes input {dims}, but its metadata says "
                              f"3x{meta.input_size[0]}x{meta.input_size[1]}; re-export it")
        self.frames_sent = 0   # frames whose logits came back
        self._lock = threading.Lock()
        self._workers: ThreadPoolExecutor | None = None   # infer_async's threads, started at its first call

    # -- server queries ----------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, client_timeout=self.timeout_s, **kw)
        except InferenceServerException as e:
            if _unreachable(e):
                raise ServerError(f"Triton server {self.url} is unreachable ({what}): {_message(e)}; is "
                                  "`edgeskd serve` (or tritonserver) running there, on its gRPC port?") from None
            raise ServerError(f"Triton server {self.url} refused {what}: {_message(e)}") from None

    def _only_model(self) -> str:
        """The one ready model of the server, when its repository index may be read (Triton without
        access restrictions, or with the token in $EDGESKD_SERVE_TOKEN)."""
        from tritonclient.utils import InferenceServerException

        self._call("the liveness check", self._client.is_server_live)
        token = os.environ.get(TOKEN_ENV)
        try:
            index = self._client.get_model_repository_index(
                headers={ACCESS_HEADER: token} if token else None, client_timeout=self.timeout_s)
            ready = [m.name for m in index.models if m.state == "READY"]
        except InferenceServerException:
            ready = []
        if len(ready) == 1:
            return ready[0]
        raise UsageError(f"give --model NAME: which model of {self.url} to run (`edgeskd serve` prints the names)")

    def _config(self) -> Any:
        from tritonclient.utils import InferenceServerException

        self._call("the liveness check", self._client.is_server_live)
        try:
            return self._client.get_model_config(self.model, self.version, client_timeout=self.timeout_s).config
        except InferenceServerException as e:
            if _unreachable(e):
                raise ServerError(f"Triton server {self.url} stopped answering: {_message(e)}") from None
            raise ServerError(f"model {self.model!r} is not served by {self.url} ({_message(e)}); check --model "
                              "against the names `edgeskd serve` printed") from None

    # -- Runner hooks ---------------------------------------------------------------------------------------
    def _deactivate_impl(self) -> None:
        self._stop_workers()

    def close(self) -> None:
        self._stop_workers()
        self._client.close()

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        inp = grpcclient.InferInput(self.input_name, list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        out = grpcclient.InferRequestedOutput(self.output_name)
        try:
            res = self._client.infer(self.model, [inp], model_version=self.version, outputs=[out],
                                     client_timeout=self.timeout_s)
        except InferenceServerException as e:
            # after frames went through, any failure is the server going away (stopping servers refuse
            # with "unavailable", "server is stopping" or "unknown model"): the stream ends there
            if self.frames_sent > 0 or _unreachable(e):
                raise ServerLost(f"Triton server {self.url} stopped answering after {self.frames_sent} frames: "
                                 f"{_message(e)}") from None
            raise ServerError(f"model {self.model!r} on {self.url} refused a {tuple(batch.shape)} batch: "
                              f"{_message(e)}") from None
        with self._lock:
            self.frames_sent += batch.shape[0]
        return res.as_numpy(self.output_name)

    # -- requests in flight ----------------------------------------------------------------------------
    def infer_async(self, batch: np.ndarray) -> Future:
        """Send ``batch`` and return at once: a future of its (N, K) float32 logits, or of the
        ``ServerError`` / ``ServerLost`` that ``infer`` would raise. Bad input raises here."""
        batch = self._ready(batch)
        with self._lock:
            if self._workers is None:
                self._workers = ThreadPoolExecutor(self.pipeline_depth, thread_name_prefix="edgeskd-remote")
            return self._workers.submit(self._infer_timed, batch)

    def _infer_timed(self, batch: np.ndarray) -> np.ndarray:
        t = time.thread_time()
        try:
            return np.asarray(self._infer_impl(batch), dtype=np.float32)
        finally:
            with self._lock:
                self.async_cpu_s += time.thread_time() - t

    def _stop_workers(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, None
        if workers is not None:   # a request still running ends by itself (answer or client timeout)
            workers.shutdown(wait=False, cancel_futures=True)


def server_statistics(url: str | ServerURL, model: str, token: str | None = None, timeout_s: float = 10.0) -> dict:
    """Triton's inference statistics of ``model`` as a dict (needs the access token of an ``edgeskd
    serve`` server: ``token`` or $EDGESKD_SERVE_TOKEN)."""
    from google.protobuf.json_format import MessageToDict
    from tritonclient.utils import InferenceServerException

    u = url if isinstance(url, ServerURL) else parse_server_url(url)
    token = token or os.environ.get(TOKEN_ENV)
    headers = {ACCESS_HEADER: token} if token else None
    client = _client(u)
    try:
        stats = client.get_inference_statistics(model, headers=headers, client_timeout=timeout_s)
    except InferenceServerException as e:
        raise ServerError(f"cannot read the statistics of {model!r} from {u}: {_message(e)} (`edgeskd serve` "
                          f"needs its access token: --access-token or ${TOKEN_ENV})") from None
    finally:
        client.close()
    return MessageToDict(stats, preserving_proto_field_name=True)
