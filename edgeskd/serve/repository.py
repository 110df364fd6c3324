"""An edgeskd artifact → a Triton model repository (Triton's ``model_repository.md`` layout).

``REPO/<name>/config.pbtxt``, ``REPO/<name>/labels.txt`` and ``REPO/<name>/<version>/model.onnx``
(or ``model.plan``) plus ``<version>/edgeskd.json`` (the artifact's metadata and, for a plan, its
engine header; Triton ignores the file). Three shapes:

* ONNX on CPU: ``backend: "onnxruntime"``, ``KIND_CPU``;
* ONNX on GPU: ``KIND_GPU`` with the TensorRT execution accelerator (``precision_mode`` INT8 for a
  Q/DQ model, FP16 for an FP16 one);
* a TensorRT engine: ``platform: "tensorrt_plan"``, the bare plan (the edgeskd header removed),
  ``max_batch_size`` = the engine's optimization-profile maximum, the instance bound to profile 0.

Every config has dynamic batching, a zero-input warm-up and the artifact's metadata as
``parameters`` (``edgeskd.<field>`` → JSON, the keys of the ONNX ``metadata_props``), which is
where ``RemoteRunner`` reads it back. Writing again under the same name adds version N+1 and keeps
N (Triton serves the newest); a model folder edgeskd did not write is refused unless ``overwrite``.
Writes are staged in hidden folders and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeskd.errors import ArtifactError, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.utils.io import write_text_atomic

SIDECAR = "edgeskd.json"
SIDECAR_FORMAT = "edgeskd-triton-model"
DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 4000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ModelSignature:
    """What Triton's config says about the model: tensor names, per-sample dims, batch limit."""

    input_name: str
    output_name: str
    input_dims: tuple[int, int, int]       # (3, H, W), without the batch axis
    output_dim: int
    max_batch: int | None = None           # the engine's profile maximum (None: any)
    min_batch: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"input_name": self.input_name, "output_name": self.output_name,
                "input_dims": list(self.input_dims), "output_dim": self.output_dim}


@dataclass
class Artifact:
    """A read artifact: its kind (onnx / plan), metadata, signature and the bytes Triton loads."""

    path: Path
    kind: str                              # "onnx" | "plan"
    meta: ModelMeta
    signature: ModelSignature
    model_bytes: bytes
    engine_header: dict[str, Any] | None = None

    @property
    def file_name(self) -> str:
        return "model.onnx" if self.kind == "onnx" else "model.plan"


def read_artifact(path: str | os.PathLike) -> Artifact:
    """An .onnx or TensorRT .engine artifact with edgeskd metadata (ArtifactError otherwise)."""
    from edgeskd.runtime.formats import Format, detect_format

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p} does not exist; give an .onnx or .engine artifact")
    fmt = detect_format(p)
    if fmt is Format.onnx:
        from edgeskd.runtime.onnxrt import load_onnx

        a = load_onnx(p)
        sig = ModelSignature(a.input_name, a.output_name, (3, *a.meta.input_size), a.meta.num_outputs,
                             max_batch=a.static_batch, min_batch=a.static_batch or 1)
        return Artifact(p, "onnx", a.meta, sig, p.read_bytes())
    if fmt is Format.tensorrt:
        from edgeskd.runtime.engine_file import read_engine

        header, plan = read_engine(p)
        sig = ModelSignature(header.input_name, header.output_name, (3, *header.meta.input_size),
                             header.meta.num_outputs, max_batch=header.max_batch, min_batch=header.min_batch)
        return Artifact(p, "plan", header.meta, sig, plan, engine_header=header.to_dict())
    raise ArtifactError(f"{p}: a Triton repository takes an .onnx or .engine artifact (export the checkpoint first)")


# -- config.pbtxt --------------------------------------------------------------------------------------
def _q(text: str) -> str:
    """A protobuf text-format string literal (C escapes; UTF-8 kept)."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def meta_parameters(meta: ModelMeta) -> dict[str, str]:
    """The metadata as Triton ``parameters``: the ONNX ``metadata_props`` keys (JSON values)."""
    return meta.to_props()


def meta_from_parameters(params: dict[str, str], source: str) -> ModelMeta:
    if not any(k.startswith("edgeskd.") for k in params):
        raise ArtifactError(f"{source} carries no edgeskd metadata in its config parameters; serve or export "
                            "it with edgeskd (`edgeskd export --format triton`, `edgeskd serve`)")
    return ModelMeta.from_props(params, source=source)


def _dims(values: Any) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


@dataclass
class ConfigSpec:
    name: str
    artifact: Artifact
    max_batch_size: int
    device: str = "cpu"                    # "cpu" | "cuda:N"
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    extra_parameters: dict[str, str] = field(default_factory=dict)
    python_backend: bool = False           # edgeskd serve: the runner in Triton's python backend (triton_model.py)


def _accelerator(precision: str) -> list[str]:
    mode = {"int8": "INT8", "fp16": "FP16"}.get(precision, "FP32")
    return [
        "optimization {",
        "  execution_accelerators {",
        "    gpu_execution_accelerator : [ {",
        '      name : "tensorrt"',
        f'      parameters {{ key: "precision_mode" value: "{mode}" }}',
        '      parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
        "    } ]",
        "  }",
        "}",
    ]


def config_text(spec: ConfigSpec) -> str:
    a, sig = spec.artifact, spec.artifact.signature
    lines = [f"name: {_q(spec.name)}"]
    if spec.python_backend:
        lines.append('backend: "python"')
    elif a.kind == "plan":
        lines.append('platform: "tensorrt_plan"')
    else:
        lines.append('backend: "onnxruntime"')
    lines += [
        f"max_batch_size: {spec.max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
        "input [",
        f"  {{ name: {_q(sig.input_name)} data_type: TYPE_FP32 format: FORMAT_NCHW dims: {_dims(sig.input_dims)} }}",
        "]",
        "output [",
        f"  {{ name: {_q(sig.output_name)} data_type: TYPE_FP32 dims: [ {sig.output_dim} ] "
        'label_filename: "labels.txt" }',
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {spec.queue_delay_us}",
        "}",
    ]
    if spec.device == "cpu" or spec.python_backend:   # the python backend's runner picks its own device
        lines.append(f"instance_group [ {{ count: {spec.instances} kind: KIND_CPU }} ]")
    else:
        gpu = int(spec.device.split(":")[1])
        profile = ' profile: [ "0" ]' if a.kind == "plan" else ""
        lines.append(f"instance_group [ {{ count: {spec.instances} kind: KIND_GPU gpus: [ {gpu} ]{profile} }} ]")
        if a.kind == "onnx":
            lines += _accelerator(a.meta.precision)
    lines += [
        "model_warmup [ {",
        '  name: "zeros" batch_size: 1',
        f"  inputs {{ key: {_q(sig.input_name)} value: {{ data_type: TYPE_FP32 dims: {_dims(sig.input_dims)} "
        "zero_data: true } }",
        "} ]",
    ]
    params = {**meta_parameters(a.meta), **spec.extra_parameters}
    for k, v in params.items():
        lines.append(f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}")
    return "\n".join(lines) + "\n"


def parse_config(text: str, source: str = "config.pbtxt") -> Any:
    """``text`` parsed into Triton's own schema (``model_config_pb2.ModelConfig``): catches misspelt
    fields and bad enum values. Needs tritonclient (the ``serve`` extra)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise UsageError("checking a Triton config needs tritonclient: pip install 'edgeskd[serve]'") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ArtifactError(f"{source} is not a valid Triton model config: {e}") from None


# -- the repository -------------------------------------------------------------------------------------
def model_name_for(artifact: Artifact, name: str | None) -> str:
    n = name or artifact.meta.model_name or artifact.path.name.split(".")[0]
    if not _NAME_RE.match(n):
        if name is not None:
            raise UsageError(f"model name {n!r} may hold only letters, digits, '.', '_' and '-'")
        n = re.sub(r"[^A-Za-z0-9._-]", "_", n).lstrip("._-") or "model"
    return n


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def read_sidecar(version_dir: Path) -> dict[str, Any] | None:
    p = version_dir / SIDECAR
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return d if isinstance(d, dict) and d.get("format") == SIDECAR_FORMAT else None


def _sidecar(a: Artifact, version: int) -> dict[str, Any]:
    return {"format": SIDECAR_FORMAT, "version": version, "source": a.path.name, "kind": a.kind,
            "meta": a.meta.to_dict(), "signature": a.signature.to_dict(), "engine_header": a.engine_header}


@dataclass
class RepositoryResult:
    model_dir: Path
    name: str
    version: int
    model_path: Path
    config_path: Path
    kept_versions: list[int]
    config: str


def _check_existing(model_dir: Path, a: Artifact, overwrite: bool) -> list[int]:
    """The versions to keep (and so the new one's number - 1); refuses a folder edgeskd did not write
    or a signature that differs from the served one."""
    if not model_dir.exists():
        return []
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir} exists and is not a folder; remove it or choose another --model-name")
    if overwrite:
        return []
    old = versions(model_dir)
    side = read_sidecar(model_dir / str(old[-1])) if old else None
    if side is None:
        raise UsageError(f"{model_dir} exists and is not an edgeskd Triton model; choose another --model-name "
                         "or pass --overwrite to replace it")
    if side.get("signature") != a.signature.to_dict() or side.get("kind") != a.kind:
        raise UsageError(f"{model_dir} serves a model with another input/output ({side.get('signature')}); all "
                         "versions of a Triton model share one config: choose another --model-name or --overwrite")
    return old


def write_triton_repository(artifact: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None,
                            device: str = "auto", max_batch_size: int | None = None,
                            queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, instances: int = 1,
                            overwrite: bool = False) -> RepositoryResult:
    """Write (or add a version to) ``repo/<name>`` for ``artifact``; returns what was written."""
    a = read_artifact(artifact)
    if device == "auto":
        device = "cuda:0" if a.kind == "plan" else "cpu"
    if a.kind == "plan" and device == "cpu":
        raise UsageError("a TensorRT engine runs on a GPU only; give --device cuda (or export the ONNX for CPU)")
    if a.kind == "onnx" and device != "cpu":
        check_tensorrt_qdq(a.path)
    max_batch = _max_batch(a, max_batch_size)
    if not 1 <= queue_delay_us <= 1_000_000 or not 1 <= instances <= 64:
        raise UsageError("queue delay must be 1..1,000,000 µs and instances 1..64")
    repo_p = Path(repo)
    if repo_p.exists() and not repo_p.is_dir():
        raise UsageError(f"--out {repo_p} is a file; a Triton repository is a folder")
    model_name = model_name_for(a, name)
    model_dir = repo_p / model_name
    kept = _check_existing(model_dir, a, overwrite)
    version = (kept[-1] + 1) if kept else 1
    text = config_text(ConfigSpec(model_name, a, max_batch, device, queue_delay_us, instances))
    _self_check(text, a)
    labels = "\n".join(a.meta.subclass_names if a.meta.output == "subclass_logits" else a.meta.class_names) + "\n"
    repo_p.mkdir(parents=True, exist_ok=True)
    if kept:
        _add_version(model_dir, a, version, text, labels)
    else:
        _new_model_dir(repo_p, model_dir, a, text, labels)
    return RepositoryResult(model_dir, model_name, version, model_dir / str(version) / a.file_name,
                            model_dir / "config.pbtxt", kept, text)


MAX_BATCH_SIZE = 1024   # the largest --max-batch-size a served or exported model takes


def check_max_batch_size(n: int) -> int:
    """``--max-batch-size``: 1..MAX_BATCH_SIZE, else a one-line UsageError (Triton export, serve, DeepStream)."""
    if not 1 <= n <= MAX_BATCH_SIZE:
        raise UsageError(f"--max-batch-size {n} must be 1..{MAX_BATCH_SIZE}")
    return n


def check_tensorrt_qdq(path: Path) -> None:
    """A one-line UsageError for an ONNX whose INT8 is the U8S8 CPU build: TensorRT (Triton's GPU
    accelerator, DeepStream) takes int8 Q/DQ only."""
    from edgeskd.quantize.qdq_source import has_uint8_activations

    if has_uint8_activations(path):
        alt = Path(str(path).replace(".int8.cpu.onnx", ".int8.qdq.onnx"))
        hint = f"give {alt}" if alt != path and alt.is_file() else "give the S8S8 .int8.qdq.onnx that build-engine writes"
        raise UsageError(f"{path} quantizes activations to uint8 (the CPU build); TensorRT takes int8 Q/DQ only: {hint}")


def _max_batch(a: Artifact, requested: int | None) -> int:
    sig = a.signature
    if sig.min_batch > 1:
        raise ArtifactError(f"{a.path} takes batches of at least {sig.min_batch}; Triton's dynamic batcher sends "
                            "batches from 1: rebuild it with a minimum batch of 1")
    limit = sig.max_batch
    if requested is None:
        return min(DEFAULT_MAX_BATCH, limit) if limit else DEFAULT_MAX_BATCH
    check_max_batch_size(requested)
    if limit and requested > limit:
        raise UsageError(f"--max-batch-size {requested} exceeds what {a.path.name} takes ({limit}: its optimization "
                         "profile / static batch); lower it or rebuild with a larger --max-batch-size")
    return requested


def _self_check(text: str, a: Artifact) -> None:
    """Parse the config with Triton's schema when tritonclient is installed (it is in tests and CI)."""
    try:
        cfg = parse_config(text)
    except UsageError:
        return
    if cfg.input[0].name != a.signature.input_name or list(cfg.output[0].dims) != [a.signature.output_dim]:
        raise ArtifactError("internal: generated Triton config does not match the model")  # pragma: no cover


def _write_version(version_dir: Path, a: Artifact, version: int) -> None:
    version_dir.mkdir()
    (version_dir / a.file_name).write_bytes(a.model_bytes)
    (version_dir / SIDECAR).write_text(json.dumps(_sidecar(a, version), indent=2) + "\n", encoding="utf-8")


def _new_model_dir(repo: Path, model_dir: Path, a: Artifact, text: str, labels: str) -> None:
    stage = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", suffix=".tmp", dir=repo))
    try:
        _write_version(stage / "1", a, 1)
        (stage / "config.pbtxt").write_text(text, encoding="utf-8")
        (stage / "labels.txt").write_text(labels, encoding="utf-8")
        os.chmod(stage, 0o755)
        if model_dir.exists():          # --overwrite: the old folder goes only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", suffix=".old", dir=repo))
            os.replace(model_dir, old / "m")
            os.replace(stage, model_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, model_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _add_version(model_dir: Path, a: Artifact, version: int, text: str, labels: str) -> None:
    stage = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=model_dir))
    try:
        _write_version(stage / "v", a, version)
        os.chmod(stage / "v", 0o755)
        os.replace(stage / "v", model_dir / str(version))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_text_atomic(model_dir / "config.pbtxt", text)
    write_text_atomic(model_dir / "labels.txt", labels)


# -- reading a repository back (edgeskd serve REPO) --------------------------------------------------------
@dataclass
class RepositoryEntry:
    name: str
    version: int
    model_path: Path
    sidecar: dict[str, Any] | None


def read_repository(repo: str | os.PathLike, model: str | None = None) -> list[RepositoryEntry]:
    """The newest version of each model in ``repo`` (only ``model`` if given)."""
    root = Path(repo)
    if (root / "config.pbtxt").is_file():
        raise UsageError(f"{root} is one model's folder; give the repository above it: edgeskd serve {root.parent}"
                         + ("" if model else f" --model {root.name}"))
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if model is not None:
        dirs = [p for p in dirs if p.name == model]
        if not dirs:
            raise UsageError(f"model {model!r} is not in {root}; it holds: "
                             f"{', '.join(p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith('.')) or 'nothing'}")
    entries = []
    for d in dirs:
        vs = versions(d)
        files = [d / str(vs[-1]) / f for f in ("model.onnx", "model.plan")] if vs else []
        found = [f for f in files if f.is_file()]
        if not found:
            raise ArtifactError(f"{d} is not an edgeskd Triton model (no <version>/model.onnx or model.plan); "
                                "write it with `edgeskd export --format triton`"
                                + ("" if model else ", or serve the others with --model NAME"))
        entries.append(RepositoryEntry(d.name, vs[-1], found[0], read_sidecar(d / str(vs[-1]))))
    if not entries:
        raise UsageError(f"{root} holds no model folder; write one with `edgeskd export --format triton --out {root}`")
    return entries
