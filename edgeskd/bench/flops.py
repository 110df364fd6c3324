"""FLOPs per image from an ONNX graph (Conv, Gemm, MatMul; 1 multiply-add = 2 FLOPs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def onnx_flops_per_image(model_or_path) -> float:
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    model = onnx.ModelProto.FromString(model.SerializeToString())  # private copy
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)

    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        d = [x.dim_value if x.HasField("dim_value") else -1 for x in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = d
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    # Q/DQ graphs: a DequantizeLinear output has its input's shape.
    for node in model.graph.node:
        if node.op_type in ("DequantizeLinear", "QuantizeLinear") and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])

    total = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = shapes.get(node.input[1])
            y = shapes.get(node.output[0])
            if not w or not y or min(y) < 0:
                continue
            # weight (Cout, Cin/groups, kh, kw); output (N, Cout, Ho, Wo)
            total += 2.0 * float(np.prod(y[1:])) * float(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0])
            b = shapes.get(node.input[1])
            if not a or not b or min(a + b) < 0:
                continue
            trans_b = any(att.name == "transB" and att.i == 1 for att in node.attribute)
            k = a[-1]
            n = b[-2] if trans_b else b[-1]
            m = float(np.prod(a[:-1]))
            total += 2.0 * m * k * n
    return total
