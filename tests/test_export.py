"""`edgeskd export`: parity vs torch, metadata round trip, output naming, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgeskd.data.base import LabeledSet
from edgeskd.errors import ArtifactError
from edgeskd.meta import ModelMeta
from edgeskd.models.checkpoint import save_checkpoint
from edgeskd.models.registry import create_model


def _meta(output="subclass_logits"):
    subs = list("abcde") if output == "subclass_logits" else ["hp", "ssa"]
    s2c = [0, 0, 1, 1, 1] if output == "subclass_logits" else [0, 1]
    return ModelMeta(class_names=["hp", "ssa"], subclass_names=subs, subclass_to_class=s2c, input_size=(32, 32),
                     arch="tiny_cnn", output=output, model_name="student-skd")


def make_checkpoint(path, output="subclass_logits", seed=0):
    """tiny_cnn with realistic BatchNorm statistics (a few train-mode passes), saved as a checkpoint."""
    torch.manual_seed(seed)
    meta = _meta(output)
    m = create_model("tiny_cnn", meta.num_outputs)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(16, 3, 32, 32) * 4 - 2)
    save_checkpoint(path, m.eval(), meta, config={})
    return path, meta


def tiny_set(n=60, seed=0):
    rng = np.random.default_rng(seed)
    sub = rng.integers(0, 5, n)
    return LabeledSet("tiny", "synthetic", ["hp", "ssa"], list("abcde"), [0, 0, 1, 1, 1],
                      np.array([0, 0, 1, 1, 1])[sub], sub, np.array(["train", "val", "test"])[np.arange(n) % 3],
                      images=rng.integers(0, 256, (n, 40, 48, 3), dtype=np.uint8))


def test_export_cli_parity_and_metadata(tmp_path, cli):
    ckpt, meta = make_checkpoint(tmp_path / "student-skd.pt")
    out = tmp_path / "out" / "student.onnx"
    r = cli("export", ckpt, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["parity"]["max_abs_diff"] <= 1e-4 and info["parity"]["top1_agreement"] == 1.0
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert [o.name for o in m.graph.output] == ["subclass_logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param   # dynamic batch
    back = ModelMeta.from_props({p.key: p.value for p in m.metadata_props})
    for k in ("class_names", "subclass_names", "subclass_to_class", "input_size", "mean", "std", "output", "arch"):
        assert getattr(back, k) == getattr(meta, k)
    assert back.precision == "fp32"
    # the runtime reproduces torch on a real batch
    from edgeskd.runtime.loader import load_runner
    from edgeskd.runtime.torch_runner import TorchRunner

    x = np.random.default_rng(3).normal(size=(5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(load_runner(out).infer(x), TorchRunner(ckpt).infer(x), atol=1e-4)


def test_export_on_dataset_class_logits_static_batch(tmp_path):
    from edgeskd.export.onnx_export import export_onnx

    ckpt, _ = make_checkpoint(tmp_path / "plain.pt", output="class_logits")
    res = export_onnx(ckpt, tmp_path / "plain.onnx", batch=4, dataset=tiny_set(), parity_samples=12)
    assert res.parity.ok and res.parity.n == 12 and "tiny test" in res.parity.source
    m = onnx.load(str(res.path))
    assert [o.name for o in m.graph.output] == ["class_logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_export_parity_failure_writes_nothing(tmp_path, monkeypatch):
    from edgeskd.export import onnx_export

    ckpt, _ = make_checkpoint(tmp_path / "s.pt")
    real = onnx_export.check_parity

    def worse(*a, **kw):   # a model whose ONNX disagrees with torch must not be written
        rep = real(*a, **kw)
        rep.max_abs_diff = 1e-2
        return rep

    monkeypatch.setattr(onnx_export, "check_parity", worse)
    with pytest.raises(ArtifactError, match="parity check failed"):
        onnx_export.export_onnx(ckpt, tmp_path / "s.onnx")
    assert not list(tmp_path.glob("*.onnx*"))


def test_export_bad_input_one_line(tmp_path, cli):
    bad = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(3)}, bad)
    r = cli("export", bad, "--out", tmp_path / "x.onnx")
    assert r.exit_code == 4 and "not an edgeskd checkpoint" in r.output and "Traceback" not in r.output
    r = cli("export", tmp_path / "missing.pt")
    assert r.exit_code == 4 and "does not exist" in r.output
    r = cli("export", tmp_path)   # a run directory instead of a checkpoint in it
    assert r.exit_code == 4 and "is a directory" in r.output and "student-skd.pt" in r.output
    ckpt, _ = make_checkpoint(tmp_path / "s.pt")
    r = cli("export", ckpt, "--batch-size", "zero", "--out", tmp_path / "s.onnx")
    assert r.exit_code == 2 and "--batch-size" in r.output
    r = cli("export", ckpt, "--opset", "11", "--out", tmp_path / "s.onnx")
    assert r.exit_code == 2 and "opset" in r.output
    assert not list(tmp_path.glob("*.onnx"))
