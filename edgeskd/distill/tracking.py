"""Experiment tracking of a training run, off to the side of it: TensorBoard event files in
``OUT/tensorboard/`` when ``tensorboard`` is installed, and an MLflow run when a tracking URI is
given (``--mlflow URI`` or ``MLFLOW_TRACKING_URI``): the settings as params, every epoch record as
metrics (``<model>.s<seed>.<key>``, step = epoch), the test figures, and report.md, metrics.json and
the plots as artifacts. Neither is needed to train; a tracker that fails (an MLflow server that does
not answer) is switched off with one warning and the run goes on. Rank 0 only.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

TB_DIR = "tensorboard"
_SKIP_KEYS = {"model", "seed", "epoch", "epochs", "best"}


def _flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]   # MLflow's limit on a param value
    return out


class Tracker:
    """``epoch(record)`` for every log.jsonl line; ``finish(out, metrics)`` at the end; ``fail()`` when the
    run fails. ``warn`` takes the one-line warnings."""

    def __init__(self, out: Path, config: dict[str, Any], *, mlflow_uri: str | None = None,
                 enabled: bool = True, warn: Callable[[str], None] = lambda s: None) -> None:
        self.out, self.warn = Path(out), warn
        self.tb: Any = None
        self.mlflow: Any = None
        self.run_id: str | None = None
        if not enabled:
            return
        if importlib.util.find_spec("tensorboard") is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(self.out / TB_DIR))
            except Exception as e:  # noqa: BLE001 - tracking never stops training
                self.warn(f"TensorBoard logging is off: {str(e).splitlines()[0][:160]}")
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            self._start_mlflow(uri, config)

    def _start_mlflow(self, uri: str, config: dict[str, Any]) -> None:
        """A run through an ``MlflowClient`` of its own (the fluent API's tracking URI and active run
        are process-wide: they would leak into whatever runs next in this process)."""
        if importlib.util.find_spec("mlflow") is None:
            self.warn(f"MLflow tracking to {uri} is off: mlflow is not installed (pip install mlflow-skinny)")
            return
        try:
            _check_reachable(uri)
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "edgeskd")
            exp = client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
            self.run_id = client.create_run(exp_id, run_name=self.out.name).info.run_id
            params = [Param(k, v) for k, v in _flat_params(config).items()]
            for i in range(0, len(params), 100):   # MLflow takes at most 100 params per batch
                client.log_batch(self.run_id, params=params[i:i + 100])
            self.mlflow = client
        except Exception as e:  # noqa: BLE001 - an unreachable server must not stop training
            self.warn(f"MLflow tracking to {uri} is off: {str(e).splitlines()[0][:160]}")
            self.mlflow = None

    @property
    def active(self) -> list[str]:
        return [name for name, on in (("tensorboard", self.tb), ("mlflow", self.mlflow)) if on is not None]

    def epoch(self, rec: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in rec.items()
                  if k not in _SKIP_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        step = int(rec.get("epoch", 0))
        prefix = f"{rec.get('model', 'model')}.s{rec.get('seed', 0)}"
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()
        if self.mlflow is not None:
            self._log_metrics({f"{prefix}.{k}": v for k, v in values.items()}, step)

    def finish(self, out: Path, metrics: dict[str, Any]) -> None:
        """The test figures, and the run's report, metrics and plots as artifacts."""
        test = {f"test.{name}.{k}": float(m[k]) for name, m in (metrics.get("models") or {}).items()
                for k in ("f1", "accuracy", "auc", "balanced_accuracy") if isinstance(m.get(k), (int, float))}
        if self.tb is not None:
            for k, v in test.items():
                self.tb.add_scalar(k.replace(".", "/", 1), v, 0)
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            self._log_metrics(test, 0)
        if self.mlflow is not None:
            try:
                for name in metrics.get("files", []):
                    f = Path(out) / name
                    if f.is_file() and f.suffix in (".md", ".json", ".png", ".onnx"):
                        self.mlflow.log_artifact(self.run_id, str(f))
                self.mlflow.set_terminated(self.run_id, "FINISHED")
            except Exception as e:  # noqa: BLE001
                self._mlflow_off(e)
            self.mlflow = None

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        try:
            self.mlflow.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])
        except Exception as e:  # noqa: BLE001
            self._mlflow_off(e)

    def fail(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            try:
                self.mlflow.set_terminated(self.run_id, "FAILED")
            except Exception:  # noqa: BLE001 - the run's own error is the one to report
                pass
            self.mlflow = None

    def _mlflow_off(self, e: Exception) -> None:
        self.warn(f"MLflow tracking stopped: {str(e).splitlines()[0][:160]}")
        try:
            self.mlflow.set_terminated(self.run_id, "FAILED")
        except Exception:  # noqa: BLE001
            pass
        self.mlflow = None


def _check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """An HTTP tracking server must answer its health check within ``timeout_s`` (MLflow's own client
    retries for minutes before it gives up); other URIs (file:, databricks) are left to MLflow."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except OSError as e:
        raise ConnectionError(f"no answer from {uri} ({getattr(e, 'reason', e)})") from None
