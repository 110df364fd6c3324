"""Q/DQ INT8 ONNX with onnxruntime's ``quantize_static`` (explicit quantization: the form TensorRT 10
and 11 build as a strongly typed network, implicit INT8 calibration having been removed in TensorRT
11), and a reader of the result that checks what TensorRT needs: symmetric INT8 (zero points 0),
per-channel weights on axis 0, per-tensor activations, no int32 bias DQ, opset >= 13.

Weights are stored pre-quantized (INT8 initializer → DequantizeLinear). TensorRT accepts that form
("pre-quantized weights need an IDequantizeLayer", TRT explicit-quantization guide) and it keeps the
file at ~¼ of FP32; ``weight_qdq_pair=True`` gives the float-weight Q→DQ form instead
(``AddQDQPairToWeight=True``) for tools that need it. Both dequantize to identical weights.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeskd.errors import ArtifactError, BackendUnavailable, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.quantize.calibration import CALIB_METHODS, CALIB_SETTINGS, CalibSettings, calib_tag, entropy_amax  # noqa: F401
from edgeskd.utils.io import atomic_path


@dataclass(frozen=True)
class QuantVariant:
    name: str
    activation: str              # "int8" | "uint8"
    activation_symmetric: bool
    tensorrt: bool               # fits TensorRT's explicit quantization rules
    description: str


VARIANTS: dict[str, QuantVariant] = {
    "s8s8": QuantVariant("s8s8", "int8", True, True,
                         "Q/DQ, symmetric INT8 activations + per-channel INT8 weights (TensorRT-compatible)"),
    "u8s8": QuantVariant("u8s8", "uint8", False, False,
                         "Q/DQ, asymmetric UINT8 activations + per-channel INT8 weights (x86 CPU friendly)"),
}



def calibrate_ranges(model, calib: Any, method: str, cache: str | Path) -> Path:
    """Run ``calib`` through ``model`` (an onnx.ModelProto) with ``method``'s settings and save the
    ranges to ``cache`` (ONNX Runtime's calibration-cache JSON, read back by ``quantize_static``)."""
    import io
    import tempfile

    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    settings = CALIB_SETTINGS[method]
    ort = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))   # what quantize_static calibrates
    with tempfile.TemporaryDirectory(prefix="edgeskd-calib-") as d, _quiet_ort_logging(), \
            contextlib.redirect_stdout(io.StringIO()):   # the histogram calibrators print progress
        src = Path(d) / "model.onnx"
        onnx.save(model, str(src))
        calibrator = create_calibrator(src, op_types, augmented_model_path=str(Path(d) / "augmented.onnx"),
                                       calibrate_method=ort[settings.collector], extra_options=dict(settings.options))
        _collect_by_shape(calibrator, calib.batches(), model.graph.input[0].name)
        if method == "entropy":
            ranges = _entropy_ranges(calibrator, ort["entropy"])
        else:
            ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)
    return Path(cache)


def _collect_by_shape(calibrator, batches, input_name: str) -> None:
    """Feed ``batches`` to an ONNX Runtime calibrator, one ``collect_data`` call per run of equally
    shaped batches. Its histogram collectors stack one call's outputs into a single array, which
    fails on a smaller last batch; ranges and histograms accumulate over calls."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self, xs: list[np.ndarray]) -> None:
            self._it = iter(xs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    it = iter(batches)
    pending = next(it, None)
    while pending is not None:
        group, pending = [pending], None
        for x in it:
            if x.shape != group[0].shape:
                pending = x
                break
            group.append(x)
        calibrator.collect_data(_Reader(group))


def _entropy_ranges(calibrator, entropy_method) -> Any:
    """TensorsData of entropy thresholds from a histogram calibrator's |x| histograms, clipped to
    the observed min/max (so a ReLU output keeps its [0, t] range for UINT8 activations)."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData


    collector = getattr(calibrator, "collector", None)
    hists = getattr(collector, "histogram_dict", None)
    if not hists:
        raise BackendUnavailable("this onnxruntime's histogram calibrator exposes no histograms; use "
                                 "--calib-method minmax or percentile")
    out = {}
    for name, (hist, edges, lo, hi) in hists.items():
        t = entropy_amax(hist, edges)
        out[name] = TensorData(lowest=np.asarray(max(float(lo), -t), np.float32),
                               highest=np.asarray(min(float(hi), t), np.float32))
    return TensorsData(entropy_method, out)


def quant_options(variant: QuantVariant, *, weight_qdq_pair: bool = False) -> dict[str, Any]:
    return {
        "ActivationSymmetric": variant.activation_symmetric,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "AddQDQPairToWeight": weight_qdq_pair,
        "DedicatedQDQPair": False,
        "QDQKeepRemovableActivations": True,
    }


@contextlib.contextmanager
def _quiet_ort_logging():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# quantize_static(calibration_cache_path=...) — the saved ranges that let a rebuild skip
# calibration — first shipped in onnxruntime 1.27 (1.26 does not have it).
MIN_ORT_FOR_QUANTIZE = (1, 27)


def check_quantizer_version(version: str | None = None) -> None:
    """One-line error (not a TypeError deep in quantize_static) on an ONNX Runtime too old to
    quantize here. Running artifacts needs no such version: the runtime works with older ones."""
    if version is None:
        import onnxruntime

        version = onnxruntime.__version__
    try:
        have = tuple(int(p) for p in version.split("+")[0].split(".")[:2])
    except ValueError:
        return   # a development build: let it try
    if have < MIN_ORT_FOR_QUANTIZE:
        need = ".".join(map(str, MIN_ORT_FOR_QUANTIZE))
        raise BackendUnavailable(
            f"INT8 quantization needs onnxruntime >= {need} (saved calibration ranges); this is {version}. "
            f"Build on a machine with `pip install -U 'onnxruntime>={need}'` — the built artifact still runs "
            f"on older ONNX Runtime versions"
        )


def quantize_qdq(
    fp32_path: str | Path,
    out: str | Path,
    meta: ModelMeta,
    *,
    calib: Any = None,                       # CalibrationSet; may be None on a cache hit
    cache: str | Path,
    variant: str = "s8s8",
    method: str = "minmax",
    weight_qdq_pair: bool = False,
    keep_head_fp32: bool = True,
    fp32_nodes: Sequence[str] = (),
) -> Path:
    """Write a Q/DQ INT8 ONNX of ``fp32_path`` to ``out`` (atomically), with edgeskd metadata.

    ``cache``: the calibrated ranges (JSON). If it exists it is used and no image is loaded;
    otherwise ``calib`` is run and the ranges are saved there. ``keep_head_fp32``: leave the final
    classifier (Gemm/MatMul feeding the output) unquantized — under 1% of the work, and ONNX
    Runtime 1.32's fused x86 QGemm with the float bias TensorRT needs loses accuracy (measured:
    max |Δ logit| 0.05 vs 0.0005 on tiny_cnn at ORT_ENABLE_ALL). ``fp32_nodes``: names of further
    nodes of the FP32 graph to leave unquantized (the sensitivity search's FP32 fallback); they keep
    their names in the output and are listed in its metadata, so ``inspect_qdq`` tells a deliberate
    FP32 layer from a missed one.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeskd.export.onnx_export import attach_metadata

    check_quantizer_version()
    v = VARIANTS[variant]
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method {method!r}; use one of {CALIB_METHODS}")
    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}[method]
    fp32 = onnx.load(str(fp32_path))
    opset = next((o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ArtifactError(f"{fp32_path} has opset {opset}; Q/DQ INT8 needs opset >= 13 (re-export with --opset 17)")
    for i, n in enumerate(fp32.graph.node):   # nodes_to_exclude works by name
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    exclude = [n.name for n in fp32.graph.node if n.op_type == "Softmax"]
    if keep_head_fp32:
        exclude += head_nodes(fp32)
    names = {n.name for n in fp32.graph.node}
    unknown = [n for n in fp32_nodes if n not in names]
    if unknown:
        raise UsageError(f"FP32 fallback layer {unknown[0]!r} is not a node of {fp32_path}")
    exclude += [n for n in fp32_nodes if n not in exclude]
    cache = Path(cache)
    have_cache = cache.is_file()
    if not have_cache and calib is None:
        raise ValueError("no calibration cache and no calibration set")
    with atomic_path(out) as tmp_model, contextlib.ExitStack() as stack:
        tmp_cache = cache if have_cache else stack.enter_context(atomic_path(cache))
        if not have_cache:
            calibrate_ranges(fp32, calib, method, tmp_cache)
        with _quiet_ort_logging():
            quantize_static(
                fp32, str(tmp_model),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8 if v.activation == "int8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=cm,
                extra_options=quant_options(v, weight_qdq_pair=weight_qdq_pair),
                calibration_cache_path=str(tmp_cache),
            )
        q = compact_names(bypass_qdq(onnx.load(str(tmp_model)), exclude), keep=exclude)
        qmeta = meta.replace(precision="int8", extra={
            **meta.extra, "quant": {"variant": v.name, "calibration": method, "weights": "qdq-pair" if weight_qdq_pair else "int8",
                                   "calibration_cache": cache.name, "fp32_nodes": exclude,
                                   "fp32_fallback": [n for n in fp32_nodes],
                                   "calibration_source": getattr(calib, "source", "cache")},
        })
        attach_metadata(q, qmeta)
        onnx.checker.check_model(q, full_check=True)
        onnx.save(q, str(tmp_model))
    return Path(out)


def head_nodes(model) -> list[str]:
    """Names of the Gemm/MatMul nodes whose result reaches a graph output through only
    element-wise/shape ops (the classifier head)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    passthrough = {"Add", "Identity", "Reshape", "Flatten", "Squeeze", "Softmax", "Cast"}

    def reaches_output(t: str, depth: int = 0) -> bool:
        if t in outputs:
            return True
        return depth < 4 and any(c.op_type in passthrough and reaches_output(c.output[0], depth + 1)
                                 for c in consumers.get(t, []))

    return [n.name for n in g.node if n.op_type in ("Gemm", "MatMul") and reaches_output(n.output[0])]


def bypass_qdq(model, nodes: Sequence[str]) -> Any:
    """Feed the compute nodes (Conv, ConvTranspose, Gemm, MatMul) named in ``nodes`` the float tensor
    in front of their input's Q→DQ pair, and drop Q/DQ nodes nothing reads any more.

    ``nodes_to_exclude`` leaves a node's weights in FP32, but its input still arrives through a
    DequantizeLinear when the producer is quantized, and ONNX Runtime's ``WeightBiasQuantization``
    optimizer (basic level) then quantizes the float weights of any Conv/Gemm behind a per-tensor
    DQ to per-tensor INT8, with an INT32 bias — an "FP32" layer that runs coarser than the INT8
    ones. Without the DQ in front, it runs in FP32 in ONNX Runtime and in TensorRT alike.
    """
    g = model.graph
    targets = set(nodes)
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.name not in targets or n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        dq = producer.get(n.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            n.input[0] = q.input[0]
    outputs = {o.name for o in g.output}
    while True:   # remove the Q/DQ (and only those) whose outputs nobody reads
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return model


def compact_names(model, keep: Sequence[str] = ()) -> Any:
    """Rename nodes and internal tensors to short ids (n0, t0...): ~15% of a small Q/DQ file is
    exporter-generated names. Graph inputs/outputs, and the nodes named in ``keep`` (the layers
    left in FP32), keep their names; semantics are unchanged."""
    g = model.graph
    keep_nodes = set(keep)
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {""}
    mapping: dict[str, str] = {}

    def new(name: str) -> str:
        if name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping)}"
        return mapping[name]

    for t in g.initializer:
        t.name = new(t.name)
    taken = {n.name for n in g.node if n.name in keep_nodes}
    for i, n in enumerate(g.node):
        if n.name not in keep_nodes:
            n.name = f"n{i}" if f"n{i}" not in taken else f"n{i}_"
        n.input[:] = [new(x) for x in n.input]
        n.output[:] = [new(x) for x in n.output]
    for vi in g.value_info:
        vi.name = new(vi.name)
    return model


# -- structure check ------------------------------------------------------------------------------
@dataclass
class QDQReport:
    opset: int
    n_quantize: int
    n_dequantize: int
    nonzero_zero_points: list[str] = field(default_factory=list)
    uint8_tensors: list[str] = field(default_factory=list)
    int32_dq: list[str] = field(default_factory=list)
    weight_not_per_channel_axis0: list[str] = field(default_factory=list)
    activation_not_per_tensor: list[str] = field(default_factory=list)
    quantized_convs: int = 0
    float_convs: list[str] = field(default_factory=list)
    fp32_layers: list[str] = field(default_factory=list)   # Convs left in FP32 on purpose (metadata)

    def problems(self) -> list[str]:
        out = []
        if self.opset < 13:
            out.append(f"opset {self.opset} < 13")
        if self.n_dequantize == 0:
            out.append("no DequantizeLinear nodes (not a Q/DQ model)")
        for label, items in (("non-zero zero points", self.nonzero_zero_points),
                             ("uint8 (asymmetric) tensors", self.uint8_tensors),
                             ("int32 DequantizeLinear (bias)", self.int32_dq),
                             ("weights not per-channel on axis 0", self.weight_not_per_channel_axis0),
                             ("activations not per-tensor", self.activation_not_per_tensor),
                             ("Conv without quantized inputs", self.float_convs)):
            if items:
                out.append(f"{label}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''}")
        return out

    @property
    def tensorrt_ok(self) -> bool:
        return not self.problems()


def inspect_qdq(model) -> QDQReport:
    """Read a Q/DQ ONNX graph and report what TensorRT's explicit quantization would object to."""
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant" and n.attribute}
    tensors = {**consts, **inits}
    producer = {o: n for n in g.node for o in n.output}
    deliberate = set(_declared_fp32_nodes(model))

    def arr(name: str) -> np.ndarray | None:
        t = tensors.get(name)
        return None if t is None else numpy_helper.to_array(t)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in g.node if n.op_type == "DequantizeLinear"]
    rep = QDQReport(opset=opset, n_quantize=len(qs), n_dequantize=len(dqs))
    for n in qs + dqs:
        if len(n.input) > 2:
            zp = arr(n.input[2])
            if zp is not None:
                if np.any(zp != 0):
                    rep.nonzero_zero_points.append(n.name)
                if zp.dtype == np.uint8:
                    rep.uint8_tensors.append(n.name)
    for n in dqs:
        x = arr(n.input[0])
        if x is not None and x.dtype == np.int32:
            rep.int32_dq.append(n.name)
    # weights: the DQ (possibly after a Q) feeding a Conv/Gemm/MatMul weight input
    for n in g.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        data_in, w_in = n.input[0], n.input[1]
        w_dq = producer.get(w_in)
        a_dq = producer.get(data_in)
        if n.op_type == "Conv":
            if not (w_dq is not None and w_dq.op_type == "DequantizeLinear"
                    and a_dq is not None and a_dq.op_type == "DequantizeLinear"):
                (rep.fp32_layers if n.name in deliberate else rep.float_convs).append(n.name)
                continue
            rep.quantized_convs += 1
        if w_dq is None or w_dq.op_type != "DequantizeLinear":
            continue
        scale = arr(w_dq.input[1])
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
        src = w_dq.input[0]
        w = arr(src)
        if w is None and producer.get(src) is not None and producer[src].op_type == "QuantizeLinear":
            w = arr(producer[src].input[0])
        if n.op_type == "Conv" and w is not None and scale is not None:
            if not (scale.ndim == 1 and scale.size == w.shape[0] and axis == 0):
                rep.weight_not_per_channel_axis0.append(n.name)
        if a_dq is not None and a_dq.op_type == "DequantizeLinear":
            a_scale = arr(a_dq.input[1])
            if a_scale is not None and a_scale.size != 1:
                rep.activation_not_per_tensor.append(n.name)
    return rep


def _declared_fp32_nodes(model) -> list[str]:
    """The nodes a Q/DQ ONNX says it leaves in FP32 on purpose (edgeskd metadata, ``quant``)."""
    import json

    props = {p.key: p.value for p in model.metadata_props}
    try:
        extra = json.loads(props.get("edgeskd.extra", "{}"))
    except ValueError:
        return []
    quant = extra.get("quant") if isinstance(extra, dict) else None
    nodes = quant.get("fp32_nodes", []) if isinstance(quant, dict) else []
    return [n for n in nodes if isinstance(n, str)]
