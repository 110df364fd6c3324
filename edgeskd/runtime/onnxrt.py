"""ONNX Runtime backend (CPU by default): FP32, FP16 and Q/DQ INT8 ONNX files.

The runner needs nothing but the artifact: metadata comes from the model's ``metadata_props``
(``edgeskd.*`` keys). For an ONNX from elsewhere, missing keys can be supplied with
``meta_overrides`` (the CLI's ``--input-size``/``--classes``); what the graph itself says (a static
input size, an output named ``class_logits``/``subclass_logits``) is used too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgeskd.errors import ArtifactError, UsageError
from edgeskd.meta import OUTPUT_KINDS, ModelMeta
from edgeskd.runtime.base import Runner


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


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX (FP32 / FP16 / Q/DQ INT8) with ONNX Runtime.

    ``path_or_bytes``: a file path or the serialized model. ``threads``: intra-op threads (None =
    ORT's default). ``providers``: ORT execution providers (default CPU). ``meta_overrides``:
    ModelMeta fields to use where the file has no edgeskd metadata (e.g. ``{"input_size": [224,
    224], "class_names": ["HP", "SSA"]}``).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path_or_bytes: str | os.PathLike | bytes,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        meta_overrides: Mapping[str, Any] | None = None,
        optimization: str = "all",
    ) -> None:
        import onnxruntime as ort

        if isinstance(path_or_bytes, (bytes, bytearray)):
            self.source = "ONNX model (bytes)"
            model: Any = bytes(path_or_bytes)
        else:
            p = Path(path_or_bytes)
            self.source = str(p)
            if not p.is_file():
                raise ArtifactError(f"ONNX file {p} does not exist")
            model = str(p)
        self.path = None if isinstance(model, bytes) else Path(model)
        available = ort.get_available_providers()
        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in available]
        if missing:
            from edgeskd.errors import BackendUnavailable

            raise BackendUnavailable(
                f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(available)}); "
                "install the matching onnxruntime build or use the CPU provider"
            )
        self.threads = threads
        try:
            self.session = ort.InferenceSession(
                model, sess_options=session_options(threads, optimization=optimization), providers=providers
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"ONNX Runtime cannot load {self.source}: {first[:300]}") from None
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1:
            raise ArtifactError(f"{self.source} has {len(inputs)} inputs; edgeskd models have one image input")
        self.input_name = inputs[0].name
        self._input_dims = list(inputs[0].shape)
        out = next((o for o in outputs if o.name in OUTPUT_KINDS), outputs[0])
        self.output_name = out.name
        out_dim = out.shape[1] if len(out.shape) == 2 else None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        if "edgeskd.precision" not in props and "precision" not in (meta_overrides or {}):
            # an ONNX from elsewhere: read the precision off the graph (Q/DQ → int8, fp16 weights → fp16)
            import onnx

            from edgeskd.runtime.formats import onnx_precision

            proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
            props["edgeskd.precision"] = json.dumps(onnx_precision(proto))
        meta = resolve_meta(
            props,
            source=self.source,
            input_dims=self._input_dims,
            output_name=out.name,
            output_dim=out_dim,
            overrides=meta_overrides,
        )
        if self._input_dims[1] not in (3, None) and isinstance(self._input_dims[1], int):
            raise ArtifactError(f"{self.source}: input has {self._input_dims[1]} channels; expected 3")
        h, w = self._input_dims[2], self._input_dims[3]
        if isinstance(h, int) and isinstance(w, int) and (h, w) != tuple(meta.input_size):
            raise ArtifactError(
                f"{self.source}: graph input is {h}x{w} but metadata says {meta.input_size[0]}x{meta.input_size[1]}"
            )
        n = self._input_dims[0]
        self.static_batch = n if isinstance(n, int) and n > 0 else None
        super().__init__(meta)
        self._active = True   # the session is live from construction

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        h, w = self.meta.input_size
        return (self.static_batch or -1, 3, h, w)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

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
