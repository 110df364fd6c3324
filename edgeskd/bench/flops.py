"""FLOPs per image from an ONNX graph (convolutions and matrix products; 1 multiply-add = 2 FLOPs).

Counts the standard ops (Conv, ConvInteger, QLinearConv, Gemm, MatMul, MatMulInteger, QLinearMatMul)
and ONNX Runtime's fused ones (com.microsoft FusedConv / FusedGemm / FusedMatMul), which an
optimized CPU artifact saved by ``build-engine`` is made of. ONNX shape inference does not know the
com.microsoft ops, so tensor shapes it leaves unknown are read off one batch-1 ONNX Runtime run with
those tensors exposed as outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# op type → index of its weight input (Cout, Cin/groups, kh, kw)
_CONV_WEIGHT = {"Conv": 1, "FusedConv": 1, "ConvInteger": 1, "QLinearConv": 3}
# op type → indices of its A and B inputs
_MATMUL_AB = {"Gemm": (0, 1), "FusedGemm": (0, 1), "MatMul": (0, 1), "FusedMatMul": (0, 1),
              "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


def _batch1(model):
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())  # private copy
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    return model


def _dims(vi) -> list[int]:
    return [x.dim_value if x.HasField("dim_value") else -1 for x in vi.type.tensor_type.shape.dim]


def _known(shape: list[int] | None) -> bool:
    return bool(shape) and min(shape) >= 0  # type: ignore[type-var]


def _probe_shapes(model, names: list[str]) -> dict[str, list[int]]:
    """Shapes of ``names`` from one ONNX Runtime run of ``model`` (batch 1) on zeros; {} on failure."""
    import onnx

    try:
        import onnxruntime as ort

        m = onnx.ModelProto.FromString(model.SerializeToString())
        present = {o.name for o in m.graph.output}
        for n in names:
            if n not in present:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        init_names = {i.name for i in m.graph.initializer}
        feeds = {}
        for inp in sess.get_inputs():
            if inp.name in init_names:
                continue
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                     "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(inp.type, np.float32)
            feeds[inp.name] = np.zeros(shape, dtype)
        outs = sess.run(names, feeds)
    except Exception:  # noqa: BLE001 - a FLOP count is informative; a graph ORT cannot run gives fewer
        return {}
    return {n: list(np.shape(o)) for n, o in zip(names, outs)}


def onnx_flops_per_image(model_or_path) -> float:
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    model = _batch1(model)
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - unknown shapes are probed below
        pass

    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = _dims(vi)
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    # Q/DQ graphs: a DequantizeLinear output has its input's shape.
    for node in model.graph.node:
        if node.op_type in ("DequantizeLinear", "QuantizeLinear") and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])

    def operands(node) -> list[str]:
        if node.op_type in _CONV_WEIGHT:
            return [node.input[_CONV_WEIGHT[node.op_type]], node.output[0]]
        if node.op_type in _MATMUL_AB:
            return [node.input[i] for i in _MATMUL_AB[node.op_type]]
        return []

    counted = [n for n in model.graph.node if n.op_type in _CONV_WEIGHT or n.op_type in _MATMUL_AB]
    missing = sorted({t for n in counted for t in operands(n) if not _known(shapes.get(t))})
    if missing:
        shapes.update(_probe_shapes(model, missing))

    total = 0.0
    for node in counted:
        if node.op_type in _CONV_WEIGHT:
            w, y = (shapes.get(t) for t in operands(node))
            if not _known(w) or not _known(y):
                continue
            # weight (Cout, Cin/groups, kh, kw); output (N, Cout, Ho, Wo)
            total += 2.0 * float(np.prod(y[1:])) * float(np.prod(w[1:]))  # type: ignore[index]
        else:
            a, b = (shapes.get(t) for t in operands(node))
            if not _known(a) or not _known(b):
                continue
            trans_a = any(att.name == "transA" and att.i == 1 for att in node.attribute)
            trans_b = any(att.name == "transB" and att.i == 1 for att in node.attribute)
            k = a[-2] if trans_a else a[-1]  # type: ignore[index]
            m = float(np.prod(a[:-2])) * (a[-1] if trans_a else a[-2]) if len(a) >= 2 else 1.0  # type: ignore[arg-type,index]
            n = b[-2] if trans_b else b[-1]  # type: ignore[index]
            total += 2.0 * m * k * n
    return total
