"""A Q/DQ INT8 ONNX given to ``build-engine`` (from ``edgeskd qat``): detection, the FP32 reference
it records, and the same model with its Q/DQ nodes removed.

Such a model is built without calibrating again: its scales are learned. Its accuracy gate needs
the FP32 student's F1 on the same validation images, which ``edgeskd qat`` records in the ONNX
(``quant.qat.reference``) with a fingerprint of those images (rows + preprocessing): a gate on other
data would compare against a number measured elsewhere, so it is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeskd.errors import ArtifactError, DataError
from edgeskd.meta import ModelMeta

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _graph(path: str | Path):
    """The ONNX graph at ``path`` (no external data), or None when it does not load (an unreadable
    file is reported by the loader that follows)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - onnx raises several error types for a bad file
        return None


def has_qdq_nodes(path: str | Path) -> bool:
    """True if the ONNX at ``path`` has QuantizeLinear/DequantizeLinear nodes (an explicitly
    quantized model)."""
    g = _graph(path)
    return g is not None and any(n.op_type in QDQ_OPS for n in g.node)


def has_uint8_activations(path: str | Path) -> bool:
    """True if a QuantizeLinear of the ONNX at ``path`` quantizes to uint8 (the asymmetric U8S8 CPU
    build); TensorRT takes int8 Q/DQ only (the S8S8 ``.int8.qdq.onnx``)."""
    import onnx

    g = _graph(path)
    if g is None:
        return False
    zero_points = {t.name: t.data_type for t in g.initializer}
    return any(n.op_type == "QuantizeLinear" and len(n.input) > 2 and zero_points.get(n.input[2]) == onnx.TensorProto.UINT8
               for n in g.node)


def split_fingerprint(dataset, meta: ModelMeta) -> str:
    """Identity of a split's images as the model sees them (rows + preprocessing)."""
    from edgeskd.quantize.calibration import CalibrationSet

    return CalibrationSet(dataset, meta, np.arange(len(dataset)), "").fingerprint()


@dataclass
class Reference:
    """The FP32 model's F1 and per-subclass accuracy (percent) on the validation split."""

    f1: float
    per_subclass: dict[str, float] = field(default_factory=dict)
    n: int = 0
    fingerprint: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recorded_reference(meta: ModelMeta, val, path: str | Path) -> Reference:
    """The FP32 reference ``edgeskd qat`` recorded in a Q/DQ ONNX, checked against ``val``."""
    qat = ((meta.extra or {}).get("quant") or {}).get("qat") or {}
    ref = qat.get("reference") if isinstance(qat, dict) else None
    if not isinstance(ref, dict) or "f1" not in ref:
        raise ArtifactError(f"{path} is a Q/DQ INT8 ONNX without the FP32 reference F1 `edgeskd qat` records, so "
                            "its accuracy cannot be gated; build from the FP32 ONNX (`edgeskd export`) instead")
    if ref.get("fingerprint") != split_fingerprint(val, meta):
        raise DataError(f"{path} recorded its FP32 reference on other validation images ({ref.get('n')} images) than "
                        f"these ({len(val)}); build it on the data it was trained with (leave out --data)")
    return Reference(float(ref["f1"]), dict(ref.get("per_subclass") or {}), int(ref.get("n", len(val))),
                     str(ref.get("fingerprint", "")), f"FP32 student, recorded by edgeskd qat ({qat.get('checkpoint', '?')})")


def strip_qdq(model) -> Any:
    """The model with its Q/DQ removed: INT8 weight initializers → their dequantized float values,
    activation QuantizeLinear→DequantizeLinear pairs → the float tensor itself. The result is the FP32
    model a QAT ONNX stands for (learned weights, float arithmetic). Modifies ``model`` in place."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    alias: dict[str, str] = {}
    drop = []
    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        src = producer.get(n.input[0])
        if n.input[0] in inits:                                   # INT8 weight → float initializer
            w, s = (numpy_helper.to_array(inits[i]) for i in n.input[:2])
            zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] in inits else 0
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if np.ndim(s) == 1 and np.size(s) > 1:
                shape = [1] * w.ndim
                shape[axis] = -1
                s, zp = np.reshape(s, shape), np.reshape(zp, shape) if np.ndim(zp) else zp
            f = ((w.astype(np.float32) - np.asarray(zp, np.float32)) * s).astype(np.float32)
            g.initializer.append(numpy_helper.from_array(f, n.output[0]))
            drop.append(n)
        elif src is not None and src.op_type == "QuantizeLinear":  # activation pair → the float input
            alias[n.output[0]] = src.input[0]
            drop += [n, src]
    for n in {id(n): n for n in drop}.values():
        g.node.remove(n)
    for n in g.node:
        n.input[:] = [alias.get(i, i) for i in n.input]
    for o in g.output:
        if o.name in alias:
            raise ArtifactError("a graph output is quantized; cannot remove its Q/DQ")
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return model


def fp32_from_qdq(qdq_path: str | Path, meta: ModelMeta, out: str | Path) -> Path:
    """``strip_qdq`` of the ONNX at ``qdq_path`` written to ``out`` with ``meta`` marked FP32."""
    import onnx

    from edgeskd.export.onnx_export import attach_metadata

    m = strip_qdq(onnx.load(str(qdq_path)))
    attach_metadata(m, meta.replace(precision="fp32", extra={**meta.extra, "qdq_removed_from": Path(qdq_path).name}))
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return Path(out)
