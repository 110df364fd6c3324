"""An edgeskd ONNX → a DeepStream ``nvinfer`` classifier: ``OUT/model.onnx``, ``OUT/labels.txt`` and
``OUT/config_infer_edgeskd.txt``.

``nvinfer`` preprocesses with one scale for every channel, ``y = net-scale-factor · (x − offsets[c])``,
and its default classifier parser expects probabilities. edgeskd's models take ``(x/255 − mean)/std``
per channel and emit (subclass) logits, so the written graph:

* takes 0–255 pixels in the model's channel order (``model-color-format`` says which) and applies
  ``x · 1/(255·std) − mean/std`` itself (the INI then has ``net-scale-factor=1`` and zero offsets);
* ends in the calibrated class probabilities, as ``edgeskd.runtime.postprocess.class_probabilities``
  computes them: the class block sums of the subclass softmax, their logs divided by the artifact's
  temperature (or each case's 1/T = Σ q_k/T_k) and a Softmax — output ``probabilities`` (N, C).
  (log Σ_block softmax(s) differs from the class logit by the same constant for every class, which
  the Softmax removes.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeskd.errors import ArtifactError, UsageError
from edgeskd.meta import ModelMeta

OUTPUT = "probabilities"
INPUT = "image"
CONFIG_NAME = "config_infer_edgeskd.txt"
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}


def _const(name: str, value: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def fold_graph(model: Any, meta: ModelMeta, input_name: str, output_name: str) -> Any:
    """``model`` (normalised input → logits) wrapped: 0–255 input → ... → class probabilities."""
    from onnx import helper

    g = model.graph
    old_in = next(v for v in g.input if v.name == input_name)
    new_in = helper.make_tensor_value_info(INPUT, old_in.type.tensor_type.elem_type, None)
    new_in.type.CopyFrom(old_in.type)
    std = np.asarray(meta.std, np.float64)
    mean = np.asarray(meta.mean, np.float64)
    pre = [_const("edgeskd_pre_scale", (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)),
           _const("edgeskd_pre_shift", (-mean / std).reshape(1, 3, 1, 1))]
    nodes_pre = [helper.make_node("Mul", [INPUT, "edgeskd_pre_scale"], ["edgeskd_scaled"]),
                 helper.make_node("Add", ["edgeskd_scaled", "edgeskd_pre_shift"], [input_name])]
    post, consts = _postprocess_nodes(meta, output_name)
    g.initializer.extend(pre + consts)
    nodes = nodes_pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    kept_inputs = [v for v in g.input if v.name != input_name]
    del g.input[:]
    g.input.extend([new_in, *kept_inputs])
    out = helper.make_tensor_value_info(OUTPUT, 1, ["N", meta.num_classes])
    del g.output[:]
    g.output.append(out)
    return model


def _postprocess_nodes(meta: ModelMeta, logits: str) -> tuple[list[Any], list[Any]]:
    """Nodes from the model's raw output to ``OUTPUT``: the class probabilities
    ``runtime.postprocess.class_probabilities`` computes. With a background class that is
    P(background) (softmax of the class logits, T = 1) at its column and (1 − P(background)) × the
    calibrated probabilities conditional on a polyp at the polyp columns."""
    from onnx import helper

    bg = meta.background_class
    if bg is None:
        return _calibrated_softmax(meta, logits, OUTPUT, "edgeskd_")
    raw_nodes, raw_consts = _calibrated_softmax(meta.replace(temperature=1.0, subclass_temperatures=None), logits,
                                                "edgeskd_raw_p", "edgeskd_r_")
    polyp_meta = meta.polyp_only()
    cond_nodes, cond_consts = _calibrated_softmax(polyp_meta, "edgeskd_polyp_out", "edgeskd_cond", "edgeskd_c_")
    c, cp = meta.num_classes, polyp_meta.num_classes
    place = np.zeros((cp, c), np.float32)
    place[np.arange(cp), meta.polyp_classes] = 1.0
    bg_col = np.zeros((1, c), np.float32)
    bg_col[0, bg] = 1.0
    consts = raw_consts + cond_consts + [
        _const_i64("edgeskd_polyp_idx", meta.polyp_outputs()), _const_i64("edgeskd_bg_idx", [bg]),
        _const("edgeskd_one", np.ones(1)), _const("edgeskd_place", place), _const("edgeskd_bg_col", bg_col)]
    nodes = raw_nodes + [
        helper.make_node("Gather", ["edgeskd_raw_p", "edgeskd_bg_idx"], ["edgeskd_p_bg"], axis=1),
        helper.make_node("Sub", ["edgeskd_one", "edgeskd_p_bg"], ["edgeskd_p_polyp"]),
        helper.make_node("Gather", [logits, "edgeskd_polyp_idx"], ["edgeskd_polyp_out"], axis=1),
    ] + cond_nodes + [
        helper.make_node("Mul", ["edgeskd_cond", "edgeskd_p_polyp"], ["edgeskd_polyp_p"]),
        helper.make_node("MatMul", ["edgeskd_polyp_p", "edgeskd_place"], ["edgeskd_polyp_cols"]),
        helper.make_node("MatMul", ["edgeskd_p_bg", "edgeskd_bg_col"], ["edgeskd_bg_cols"]),
        helper.make_node("Add", ["edgeskd_polyp_cols", "edgeskd_bg_cols"], [OUTPUT]),
    ]
    return nodes, consts


def _const_i64(name: str, value: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)


def _calibrated_softmax(meta: ModelMeta, logits: str, out: str, p: str) -> tuple[list[Any], list[Any]]:
    """Nodes ``logits`` → ``out`` = softmax(class logits / T) of a model without a background class
    (``p``: the prefix of every name made here)."""
    from onnx import helper

    s = meta.num_outputs
    consts, nodes = [], []
    if meta.output == "subclass_logits":
        block = np.zeros((s, meta.num_classes), np.float32)
        block[np.arange(s), meta.subclass_to_class] = 1.0
        consts.append(_const(f"{p}blocks", block))
        nodes += [helper.make_node("Softmax", [logits], [f"{p}q"], axis=1),
                  helper.make_node("MatMul", [f"{p}q", f"{p}blocks"], [f"{p}class_p"]),
                  helper.make_node("Log", [f"{p}class_p"], [f"{p}class_logits"])]
        class_logits = f"{p}class_logits"
    else:
        class_logits = logits
    if meta.subclass_temperatures is not None and meta.output == "subclass_logits":
        inv = (1.0 / np.asarray(meta.subclass_temperatures, np.float64)).reshape(s, 1)
        consts.append(_const(f"{p}inv_t", inv))
        nodes += [helper.make_node("MatMul", [f"{p}q", f"{p}inv_t"], [f"{p}case_inv_t"]),
                  helper.make_node("Mul", [class_logits, f"{p}case_inv_t"], [f"{p}scaled_logits"])]
        class_logits = f"{p}scaled_logits"
    elif meta.temperature != 1.0:
        consts.append(_const(f"{p}inv_t", np.asarray([1.0 / meta.temperature])))
        nodes.append(helper.make_node("Mul", [class_logits, f"{p}inv_t"], [f"{p}scaled_logits"]))
        class_logits = f"{p}scaled_logits"
    nodes.append(helper.make_node("Softmax", [class_logits], [out], axis=1))
    return nodes, consts


def config_ini(meta: ModelMeta, *, batch_size: int, gpu_id: int = 0) -> str:
    mode = NETWORK_MODE.get(meta.precision, 0)
    precision = {0: "fp32", 1: "int8", 2: "fp16"}[mode]
    threshold = meta.threshold if meta.threshold is not None else 0.0
    lines = [
        f"# DeepStream nvinfer classifier for {meta.model_name or meta.arch or 'an edgeskd model'} "
        f"({meta.producer}); classes: {', '.join(meta.class_names)}",
        "# The ONNX takes 0-255 pixels (normalisation folded into the graph) and outputs calibrated class",
        "# probabilities. nvinfer scales the whole frame (process-mode=1): crop the endoscope's content area",
        "# (black border, overlay text) upstream, e.g. with nvvideoconvert src-crop or nvdspreprocess.",
        "[property]",
        f"gpu-id={gpu_id}",
        "net-scale-factor=1.0",
        "offsets=0;0;0",
        f"model-color-format={0 if meta.channel_order == 'RGB' else 1}",
        "onnx-file=model.onnx",
        f"model-engine-file=model.onnx_b{batch_size}_gpu{gpu_id}_{precision}.engine",
        "labelfile-path=labels.txt",
        f"batch-size={batch_size}",
        f"network-mode={mode}",
        "network-type=1",
        "process-mode=1",
        f"output-blob-names={OUTPUT}",
        f"classifier-threshold={threshold:g}",
        "gie-unique-id=1",
    ]
    if mode == 1:
        lines.insert(4, "# INT8 from the graph's Q/DQ nodes (explicit quantization): no int8-calib-file needed")
    return "\n".join(lines) + "\n"


@dataclass
class DeepStreamResult:
    out_dir: Path
    onnx_path: Path
    config_path: Path
    labels_path: Path


def write_deepstream(artifact: str | os.PathLike, out_dir: str | os.PathLike, *, batch_size: int = 1,
                     gpu_id: int = 0, overwrite: bool = False) -> DeepStreamResult:
    """Write the DeepStream folder for an edgeskd ONNX (staged, renamed into place when complete)."""
    import onnx

    from edgeskd.runtime.onnxrt import load_onnx

    src = Path(artifact)
    if src.suffix.lower() != ".onnx":
        raise UsageError(f"--format deepstream takes an .onnx artifact (DeepStream builds its own engine), got {src}")
    from edgeskd.serve.repository import check_max_batch_size, check_tensorrt_qdq

    check_max_batch_size(batch_size)
    a = load_onnx(src)
    if NETWORK_MODE.get(a.meta.precision, 0) == 1:   # DeepStream builds a TensorRT engine from the Q/DQ graph
        check_tensorrt_qdq(src)
    if a.static_batch is not None and a.static_batch != batch_size:
        raise ArtifactError(f"{src} has a fixed batch of {a.static_batch}; export it with a dynamic batch "
                            f"or give --max-batch-size {a.static_batch}")
    out = Path(out_dir)
    ours = ("model.onnx", "labels.txt", CONFIG_NAME)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; choose another --out")
    present = [n for n in ours if (out / n).exists()] if out.is_dir() else []
    if present and not overwrite:
        raise UsageError(f"{out} already holds {', '.join(present)}; pass --overwrite to replace them, or choose "
                         "another --out")
    model = fold_graph(onnx.load(str(src)), a.meta, a.input_name, a.output_name)
    props = {p.key: p.value for p in model.metadata_props}
    props["edgeskd.deepstream"] = '"0-255 input, normalisation folded in, class probabilities out"'
    del model.metadata_props[:]
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several checker / inference error types
        raise ArtifactError(f"the DeepStream graph built from {src} does not check: {e}") from None
    # only our three files are written (other files in --out stay): staged in --out, then each renamed
    # into place once all are written
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".edgeskd-deepstream.", suffix=".tmp", dir=out))
    try:
        onnx.save(model, str(stage / "model.onnx"))
        (stage / "labels.txt").write_text(";".join(a.meta.class_names) + "\n", encoding="utf-8")
        (stage / CONFIG_NAME).write_text(config_ini(a.meta, batch_size=batch_size, gpu_id=gpu_id), encoding="utf-8")
        for name in ours:
            os.chmod(stage / name, 0o644)
            os.replace(stage / name, out / name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return DeepStreamResult(out, out / "model.onnx", out / CONFIG_NAME, out / "labels.txt")
