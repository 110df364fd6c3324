"""ONNX Runtime backend (CPU by default): FP32, FP16 and Q/DQ INT8 ONNX files.

Loader and runner are separate (Polygraphy's lifecycle): ``load_onnx`` reads the artifact and its
metadata (no session yet), ``create_session`` builds the ONNX Runtime session, and
``OnnxRuntimeRunner`` creates the session in ``activate`` and drops it in ``deactivate``; its
``metadata`` is readable before that.

The runner needs nothing but the artifact: metadata comes from the model's ``metadata_props``
(``edgeskd.*`` keys). For an ONNX from elsewhere, missing keys can be supplied with
``meta_overrides`` (the CLI's ``--input-size``/``--classes``); what the graph itself says (a static
input size, an output named ``class_logits``/``subclass_logits``, Q/DQ nodes or float16 weights)
is used too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np

from edgeskd.errors import ArtifactError, BackendUnavailable, UsageError
from edgeskd.meta import OUTPUT_KINDS, ModelMeta
from edgeskd.runtime.base import Runner

if TYPE_CHECKING:
    import onnx

Dim = Union[int, str, None]   # dim_value, dim_param, or unknown — as ONNX Runtime reports a dimension
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger"})


def parse_props(props: Mapping[str, str], source: str) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in props.items():
        if k.startswith("edgeskd."):
            try:
                d[k[len("edgeskd."):]] = json.loads(v)   # JSON only, never eval
            except json.JSONDecodeError:
                raise ArtifactError(f"{source}: metadata key {k} is not valid JSON") from None
    return d


def resolve_meta(
    props: Mapping[str, str],
    *,
    source: str,
    input_dims: Sequence[Any] | None = None,
    output_name: str | None = None,
    output_dim: Any = None,
    overrides: Mapping[str, Any] | None = None,
) -> ModelMeta:
    """ModelMeta from ONNX props + what the graph says + user overrides (overrides win)."""
    d = parse_props(props, source)
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if "input_size" not in d and input_dims is not None and len(input_dims) == 4:
        h, w = input_dims[2], input_dims[3]
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            d["input_size"] = [h, w]
    if "output" not in d and output_name in OUTPUT_KINDS:
        d["output"] = output_name
    if "class_names" in d and "subclass_names" not in d and "subclass_to_class" not in d:
        # Only class names known: a plain class-logit model (one "subclass" per class).
        if d.get("output", "class_logits") == "class_logits":
            d["output"] = "class_logits"
            d["subclass_names"] = list(d["class_names"])
            d["subclass_to_class"] = list(range(len(d["class_names"])))
    meta = ModelMeta.from_dict(d, source=source)
    if isinstance(output_dim, int) and output_dim > 0 and output_dim != meta.num_outputs:
        raise ArtifactError(
            f"{source}: the model outputs {output_dim} values but its metadata describes "
            f"{meta.num_outputs} {meta.output}; fix the metadata (re-export) or the --classes given"
        )
    return meta


def session_options(threads: int | None = None, *, optimization: str = "all",
                    optimized_model_path: str | os.PathLike | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        if threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.graph_optimization_level = level
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    return so


# -- what the graph says -----------------------------------------------------------------------------
@dataclass
class OnnxSummary:
    """What a runner needs to know about an ONNX model before ONNX Runtime loads it."""

    inputs: list[tuple[str, list[Dim]]] = field(default_factory=list)    # graph inputs that are not weights
    outputs: list[tuple[str, list[Dim]]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)               # metadata_props
    op_types: set[str] = field(default_factory=set)                      # of the main graph's nodes
    weight_types: set[int] = field(default_factory=set)                  # TensorProto data types of initializers

    def precision(self) -> str:
        """int8 with Q/DQ (or QLinear/Integer) nodes, fp16 with float16 weights, else fp32."""
        from onnx import TensorProto

        if self.op_types & QUANTIZED_OPS:
            return "int8"
        return "fp16" if TensorProto.FLOAT16 in self.weight_types else "fp32"


def _text(v: str | bytes) -> str:
    """A string field: ONNX is proto2, so protobuf hands back the bytes of one that is not UTF-8."""
    return v if isinstance(v, str) else v.decode("utf-8")   # UnicodeDecodeError for those bytes


def _dims(value: onnx.ValueInfoProto) -> list[Dim]:
    """The shape of a tensor (or sparse tensor) input/output; [] when the rank is unknown."""
    kind = value.type.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type") or not getattr(value.type, kind).HasField("shape"):
        return []
    return [_dim(d) for d in getattr(value.type, kind).shape.dim]


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    which = d.WhichOneof("value")   # "dim_value", "dim_param" or None
    return d.dim_value if which == "dim_value" else _text(d.dim_param) if which == "dim_param" else None


def onnx_summary(model: onnx.ModelProto) -> OnnxSummary:
    """The ``OnnxSummary`` of a parsed model."""
    g = model.graph
    weights = {_text(t.name) for t in g.initializer} | {_text(t.values.name) for t in g.sparse_initializer}
    inputs = [(_text(v.name), _dims(v)) for v in g.input]
    return OnnxSummary(
        # before IR version 4 weights were listed as graph inputs too; ONNX Runtime does not count them
        inputs=[(name, dims) for name, dims in inputs if name not in weights],
        outputs=[(_text(v.name), _dims(v)) for v in g.output],
        metadata={_text(p.key): _text(p.value) for p in model.metadata_props},
        op_types={_text(n.op_type) for n in g.node},
        weight_types={t.data_type for t in g.initializer},
    )


def read_onnx_summary(data: bytes, source: str = "ONNX model (bytes)") -> OnnxSummary:
    """The ``OnnxSummary`` of a serialized model (ArtifactError if the bytes are not one); external
    weight files are not read."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx_summary(onnx.load_model_from_string(data))
    except (DecodeError, UnicodeDecodeError):
        raise ArtifactError(f"cannot load {source}: not an ONNX model") from None


# -- loader -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxArtifact:
    """A read ONNX artifact: what ONNX Runtime is given (a path or the bytes), its metadata, and the
    graph's image input and logits output."""

    model: str | bytes
    source: str                       # for messages: the path, or "ONNX model (bytes)"
    meta: ModelMeta
    input_name: str
    input_dims: tuple[Any, ...]       # (N, 3, H, W); str or None for a symbolic dimension
    output_name: str

    @property
    def path(self) -> Path | None:
        return None if isinstance(self.model, bytes) else Path(self.model)

    @property
    def static_batch(self) -> int | None:
        n = self.input_dims[0]
        return n if isinstance(n, int) and n > 0 else None


def _read(path_or_bytes: str | os.PathLike | bytes) -> tuple[str | bytes, str, bytes]:
    """(what InferenceSession takes, source name, the serialized model)."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data = bytes(path_or_bytes)
        return data, "ONNX model (bytes)", data
    p = Path(path_or_bytes)
    if not p.is_file():
        raise ArtifactError(f"ONNX file {p} does not exist")
    return str(p), str(p), p.read_bytes()


def load_onnx(path_or_bytes: str | os.PathLike | bytes, *,
              meta_overrides: Mapping[str, Any] | None = None) -> OnnxArtifact:
    """Read an ONNX file (or its bytes) and resolve its metadata, without creating a session.

    ArtifactError for a file that is not an ONNX model, a graph that is not one image input → logits,
    or metadata that does not fit the graph.
    """
    model, source, data = _read(path_or_bytes)
    summary = read_onnx_summary(data, source)
    if len(summary.inputs) != 1:
        raise ArtifactError(f"{source} has {len(summary.inputs)} inputs; edgeskd models have one image input")
    input_name, dims = summary.inputs[0]
    if len(dims) != 4:
        raise ArtifactError(f"{source}: input {input_name!r} has rank {len(dims)}; expected (N, 3, H, W)")
    if not summary.outputs:
        raise ArtifactError(f"{source} has no output")
    output_name, out_dims = next((o for o in summary.outputs if o[0] in OUTPUT_KINDS), summary.outputs[0])
    meta = resolve_meta(_props(summary, meta_overrides), source=source, input_dims=dims, output_name=output_name,
                        output_dim=out_dims[1] if len(out_dims) == 2 else None, overrides=meta_overrides)
    _check_input_fits(dims, meta, source)
    return OnnxArtifact(model, source, meta, input_name, tuple(dims), output_name)


def _props(summary: OnnxSummary, overrides: Mapping[str, Any] | None) -> dict[str, str]:
    props = dict(summary.metadata)
    if "edgeskd.precision" not in props and "precision" not in (overrides or {}):
        # an ONNX from elsewhere: read the precision off the graph (Q/DQ → int8, fp16 weights → fp16)
        props["edgeskd.precision"] = json.dumps(summary.precision())
    return props


def _check_input_fits(dims: Sequence[Any], meta: ModelMeta, source: str) -> None:
    if isinstance(dims[1], int) and dims[1] != 3:
        raise ArtifactError(f"{source}: input has {dims[1]} channels; expected 3")
    h, w = dims[2], dims[3]
    if isinstance(h, int) and isinstance(w, int) and (h, w) != tuple(meta.input_size):
        raise ArtifactError(
            f"{source}: graph input is {h}x{w} but metadata says {meta.input_size[0]}x{meta.input_size[1]}"
        )


def create_session(artifact: OnnxArtifact, *, threads: int | None = None, providers: Sequence[str] | None = None,
                   optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` of the artifact (BackendUnavailable for a provider this
    ONNX Runtime lacks; ArtifactError when ONNX Runtime cannot load the model)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = list(providers or ["CPUExecutionProvider"])
    names = [p[0] if isinstance(p, tuple) else p for p in providers]   # (name, options) pairs too
    missing = [p for p in names if p not in available]
    if missing:
        raise BackendUnavailable(
            f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(available)}); "
            "install the matching onnxruntime build or use the CPU provider"
        )
    try:
        return ort.InferenceSession(artifact.model, sess_options=session_options(threads, optimization=optimization),
                                    providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"ONNX Runtime cannot load {artifact.source}: {first[:300]}") from None


# -- runner ------------------------------------------------------------------------------------------
class OnnxRuntimeRunner(Runner):
    """Runs an ONNX (FP32 / FP16 / Q/DQ INT8) with ONNX Runtime.

    ``artifact``: a file path, the serialized model, or an ``OnnxArtifact`` from ``load_onnx``.
    ``threads``: intra-op threads (None = ORT's default). ``providers``: ORT execution providers
    (default CPU). ``meta_overrides``: ModelMeta fields to use where the file has no edgeskd metadata
    (e.g. ``{"input_size": [224, 224], "class_names": ["HP", "SSA"]}``). The session exists between
    ``activate`` and ``deactivate`` (``infer`` activates a runner that is not active).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        artifact: str | os.PathLike | bytes | OnnxArtifact,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        meta_overrides: Mapping[str, Any] | None = None,
        optimization: str = "all",
    ) -> None:
        if not isinstance(artifact, OnnxArtifact):
            artifact = load_onnx(artifact, meta_overrides=meta_overrides)
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        self.artifact = artifact
        self.threads = threads
        self._providers = list(providers or ["CPUExecutionProvider"])
        self.optimization = optimization
        self.session: Any = None
        super().__init__(artifact.meta)

    # what the artifact says, readable before activation
    @property
    def source(self) -> str:
        return self.artifact.source

    @property
    def path(self) -> Path | None:
        return self.artifact.path

    @property
    def input_name(self) -> str:
        return self.artifact.input_name

    @property
    def output_name(self) -> str:
        return self.artifact.output_name

    @property
    def static_batch(self) -> int | None:
        return self.artifact.static_batch

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        h, w = self.meta.input_size
        return (self.static_batch or -1, 3, h, w)

    @property
    def providers(self) -> list[str]:
        """The providers the session uses (those asked for, before activation)."""
        return list(self.session.get_providers()) if self.session is not None else list(self._providers)

    def _activate_impl(self) -> None:
        self.session = create_session(self.artifact, threads=self.threads, providers=self._providers,
                                      optimization=self.optimization)

    def _deactivate_impl(self) -> None:
        self.session = None

    def _infer_impl(self, batch: np.ndarray) -> np.ndarray:
        nb = self.static_batch
        if nb is None or batch.shape[0] == nb:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        # Static-batch model: run in chunks of nb, padding the last one.
        outs = []
        for i in range(0, batch.shape[0], nb):
            chunk = batch[i:i + nb]
            k = chunk.shape[0]
            if k < nb:
                chunk = np.concatenate([chunk, np.zeros((nb - k, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:k])
        return np.concatenate(outs)
