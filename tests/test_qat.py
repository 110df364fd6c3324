"""Quantization-aware distillation (`edgeskd qat`): the student fine-tuned with TensorRT-style fake
quantization and its own distillation loss, exported as a Q/DQ ONNX that TensorRT builds directly
(symmetric INT8, per-channel weights on axis 0, no int32 bias) and ONNX Runtime runs; bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeskd.meta import ModelMeta
from edgeskd.models.checkpoint import save_checkpoint
from edgeskd.models.registry import create_model

SUBS, S2C = list("abcde"), [0, 0, 1, 1, 1]


def _bn_stats(m, seed):
    torch.manual_seed(seed)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(16, 3, 32, 32) * 4 - 2)
    return m.eval()


def tiny_run(tmp_path, mode="skd", n=72):
    """A run folder like `edgeskd train` writes: data (folder tree), teacher.pt, student-<mode>.pt."""
    from test_export import tiny_set

    from edgeskd.data.writers import write_dataset

    data = write_dataset(tiny_set(n), tmp_path / "data", "folder")
    run = tmp_path / "run"
    cfg = {"train": {"data": str(data), "format": "folder", "img_size": 32, "alpha": 0.5, "temperature": 2.0,
                     "lr": 2e-3, "batch_size": 16, "epochs": 10, "augment": False}}
    tmeta = ModelMeta(class_names=["hp", "ssa"], subclass_names=SUBS, subclass_to_class=S2C, input_size=(32, 32),
                      arch="tiny_cnn", output="subclass_logits", model_name="teacher")
    save_checkpoint(run / "teacher.pt", _bn_stats(create_model("tiny_cnn", 5), 1), tmeta, config=cfg)
    out_kind = "subclass_logits" if mode == "skd" else "class_logits"
    smeta = ModelMeta(class_names=["hp", "ssa"], subclass_names=SUBS if mode == "skd" else ["hp", "ssa"],
                      subclass_to_class=S2C if mode == "skd" else [0, 1], input_size=(32, 32), arch="tiny_cnn",
                      output=out_kind, model_name=f"student-{mode}", extra={"distillation": mode})
    student = _bn_stats(create_model("tiny_cnn", smeta.num_outputs), 2)
    hist = [{"epoch": e + 1, "time_s": 3.0} for e in range(10)]
    save_checkpoint(run / f"student-{mode}.pt", student, smeta, config=cfg, metrics={"history": hist})
    return run, data


def test_fake_quant_is_tensorrt_int8():
    from edgeskd.quantize.qat import fake_quant, weight_scale

    x = torch.tensor([-3.0, -1.0, 0.004, 0.5, 1.0, 1.9, 7.0])
    s = torch.tensor(2.0 / 127)
    y = fake_quant(x, s)
    assert torch.allclose(y, torch.clamp(torch.round(x / s), -128, 127) * s)
    assert y.max() == pytest.approx(2.0) and y.min() == pytest.approx(-128 * 2.0 / 127)
    w = torch.randn(4, 3, 3, 3)
    w[2] *= 10
    ws = weight_scale(w)                                   # one scale per output channel (axis 0)
    assert ws.shape == (4,) and torch.allclose(ws * 127, w.abs().amax(dim=(1, 2, 3)))
    # the straight-through gradient: identity inside the range, zero where clipped
    xg = x.clone().requires_grad_(True)
    fake_quant(xg, s).sum().backward()
    assert xg.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_qat_uses_the_checkpoints_own_loss():
    from edgeskd.distill import losses as L
    from edgeskd.quantize.qat import distillation_loss

    tm = ModelMeta(class_names=["hp", "ssa"], subclass_names=SUBS, subclass_to_class=S2C, input_size=(32, 32))
    g = torch.Generator().manual_seed(0)
    s_sub, t_sub = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y, s = torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([0, 2, 3, 1, 4, 0])
    got = distillation_loss("skd", tm, alpha=0.3, temperature=2.0)(s_sub, t_sub, y, s)["loss"]
    assert torch.isclose(got, L.skd_loss(s_sub, t_sub, y, S2C, alpha=0.3, temperature=2.0)["loss"])
    s_cls = torch.randn(6, 2, generator=g)
    got = distillation_loss("kd", tm, alpha=0.3, temperature=2.0)(s_cls, t_sub, y, s)["loss"]
    want = L.kd_loss(s_cls, L.subclass_to_class_logits(t_sub, S2C), y, alpha=0.3, temperature=2.0)["loss"]
    assert torch.isclose(got, want)
    assert torch.isclose(distillation_loss("none", None, alpha=0.3, temperature=2.0)(s_cls, None, y, s)["loss"],
                         L.ce_loss(s_cls, y)["loss"])


def test_qat_end_to_end_with_its_teacher(tmp_path, cli):
    from edgeskd.quantize.qdq import inspect_qdq
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    run, _ = tiny_run(tmp_path)
    out = tmp_path / "student.qat.onnx"
    r = cli("qat", run / "student-skd.pt", "--epochs", "1", "--calib-size", "24", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["mode"] == "skd" and info["teacher"] == str(run / "teacher.pt") and info["epochs"] == 1
    assert [h["epoch"] for h in info["history"]] == [0, 1] and np.isfinite(info["history"][1]["loss"])
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert min(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 13
    rep = inspect_qdq(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert rep.problems() == [] and rep.n_quantize >= len(convs) and rep.n_dequantize > rep.n_quantize
    assert rep.quantized_convs == len(convs) >= 5 and rep.int32_dq == []      # every conv of tiny_cnn
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    for conv in convs:                                  # INT8 weights → DQ with one scale per output channel
        dq = producer[conv.input[1]]
        w, scale, zp = (inits[i] for i in dq.input)
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],) and zp.dtype == np.int8 and not zp.any()
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
        assert np.abs(w).max() == 127                   # scale = max|w| / 127 per channel
    for n in m.graph.node:                              # symmetric: every zero point is int8 0
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any()
    assert not [n for n in m.graph.node if n.op_type == "BatchNormalization"]   # folded before QAT
    meta = OnnxRuntimeRunner(out).meta
    assert meta.precision == "int8" and meta.subclass_names == SUBS and meta.output == "subclass_logits"
    assert meta.extra["quant"]["method"] == "qat" and meta.extra["quant"]["fp32_nodes"]      # the head
    assert meta.extra["data"]["data"].endswith("data")
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    assert OnnxRuntimeRunner(out).infer(x).shape == (3, 5)
    assert info["parity"]["top1_agreement"] == 1.0
    assert info["parity"]["max_abs_diff"] <= 0.05 * max(1.0, info["parity"]["logit_range"])
    assert out.stat().st_size < 0.45 * (4 * sum(p.numel() for p in create_model("tiny_cnn", 5).parameters()))
    assert set(info["test"]["onnx_int8"]["per_subclass_accuracy"]) <= set(SUBS)


def test_qat_bad_input(tmp_path, cli):
    run, data = tiny_run(tmp_path)
    out = tmp_path / "o.qat.onnx"

    def err(*args):
        r = cli("qat", *args, "--out", out)
        assert r.exit_code != 0 and not out.exists()
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
        return r.output

    assert "teacher checkpoint" in err(run / "teacher.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in err(bad)
    (run / "teacher.pt").rename(tmp_path / "elsewhere.pt")
    assert "--teacher" in err(run / "student-skd.pt")
    assert "--teacher" in err(run / "student-skd.pt", "--teacher", tmp_path / "missing.pt")
    assert "--epochs" in err(run / "student-skd.pt", "--teacher", tmp_path / "elsewhere.pt", "--epochs", "0")
    assert not list(tmp_path.glob(".o.qat.onnx*"))        # no temporary left behind


def test_qat_trains_with_the_students_augmentation():
    """The fine-tuning batches are augmented as the student's were (the run's --augment policy; an
    older run's true / false): a string policy read as a boolean turned 'none' into augmentation."""
    from test_export import tiny_set

    from edgeskd.quantize.qat import _loader

    meta = ModelMeta(class_names=["hp", "ssa"], subclass_names=SUBS, subclass_to_class=S2C, input_size=(32, 32))
    train = tiny_set(30).split("train")
    for policy, augmented in (("none", False), (False, False), ("endoscopy", True), (True, True)):
        assert _loader(train, meta, batch_size=4, augment=policy, seed=0).dataset.train is augmented
    flip = _loader(train, meta, batch_size=4, augment="flip", seed=0).dataset
    assert flip.train and not flip.rotate and flip.jitter == 0.0


def test_qat_uses_the_distillation_settings_the_student_was_trained_with():
    from edgeskd.quantize.qat import trained_distillation

    tuned = {"config": {"train": {"temperature": None, "alpha": 0.5}, "distillation": {"temperature": 1.0, "alpha": 0.9}}}
    assert trained_distillation(tuned, "skd") == (1.0, 0.9)            # --tune's choice, recorded per student
    given = {"config": {"train": {"temperature": 3.0, "alpha": 0.7}}}
    assert trained_distillation(given, "kd") == (3.0, 0.7)             # --temperature / --alpha of the run
    defaults = {"config": {"train": {"temperature": None, "alpha": 0.5}}}
    # a checkpoint from before students recorded (T, α): that version's default, T = 4 for both modes
    assert trained_distillation(defaults, "skd") == (4.0, 0.5) and trained_distillation(defaults, "kd") == (4.0, 0.5)
