"""Package import, CLI skeleton, metadata, atomic writes, preprocessing, runner input checks."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from edgeskd.errors import ArtifactError, UsageError
from edgeskd.meta import ModelMeta


def _meta(**kw):
    d = dict(class_names=["hp", "ssa"], subclass_names=["a", "b", "c", "d", "e"],
             subclass_to_class=[0, 0, 1, 1, 1], input_size=(32, 32))
    d.update(kw)
    return ModelMeta(**d)


def test_import_without_torch_or_gpu_libs():
    code = (
        "import sys; import edgeskd, edgeskd.cli.app, edgeskd.runtime.base, edgeskd.runtime.preprocess;"
        "bad=[m for m in ('torch','tensorrt','pycuda','cuda') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_and_help(cli):
    r = cli("--version")
    assert r.exit_code == 0 and r.output.startswith("edgeskd ")
    r = cli("--help")
    assert r.exit_code == 0
    for cmd in ("synth", "train", "export", "build-engine", "bench", "stream", "info", "quickstart"):
        assert cmd in r.output


def test_meta_roundtrip_props():
    m = _meta(extra={"trt_version": "10.3.0"})
    back = ModelMeta.from_props(m.to_props())
    assert back.to_dict() == m.to_dict()
    assert back.num_outputs == 5 and back.num_classes == 2


def test_meta_missing_keys_named():
    with pytest.raises(ArtifactError, match="input_size.*pass --img-size/--classes"):
        ModelMeta.from_dict({"class_names": ["a", "b"], "subclass_names": ["a", "b"],
                             "subclass_to_class": [0, 1], "output": "class_logits"})
    # subclass names cannot come from --classes: the hint must not offer it
    with pytest.raises(ArtifactError, match="subclass_names, subclass_to_class.*subclass names from the checkpoint"):
        ModelMeta.from_dict({"class_names": ["a", "b"], "input_size": [32, 32], "output": "subclass_logits"})


@pytest.mark.parametrize("bad", [dict(subclass_to_class=[0, 1, 0, 1, 1]),
                                 dict(subclass_to_class=[0, 0, 0, 0, 0]),
                                 dict(output="probs"), dict(std=(0.1, 0.0, 0.1))])
def test_meta_rejects_inconsistent(bad):
    with pytest.raises(ArtifactError):
        _meta(**bad)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from edgeskd.utils.io import atomic_path

    out = tmp_path / "a.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole" and len(list(tmp_path.iterdir())) == 1
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    with atomic_path(out) as tmp:   # a writer that replaces the file with its own mode
        tmp.unlink()
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_unwritable_outputs_are_one_line_usage_errors(tmp_path, cli):
    from edgeskd.errors import UsageError
    from edgeskd.utils.io import atomic_path, check_output_file

    (tmp_path / "adir.json").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        check_output_file(tmp_path / "adir.json")
    with pytest.raises(UsageError, match="is a directory"):
        with atomic_path(tmp_path / "adir.json"):
            pass
    if Path("/proc/self").is_dir():   # root passes os.access there, but no file can be made
        with pytest.raises(UsageError, match="cannot write"):
            with atomic_path("/proc/edgeskd-test.json"):
                pass
    r = cli("bench", tmp_path / "nothing.onnx", "--out", tmp_path / "adir.json")
    assert r.exit_code == 2 and "is a directory" in r.output and "Traceback" not in r.output


def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    from edgeskd.runtime.preprocess import resize_bilinear

    for out in [(16, 20), (64, 90), (37, 53)]:
        ours = resize_bilinear(img, out)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=out, mode="bilinear",
            align_corners=False, antialias=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_preprocess_normalises_and_orders_channels():
    from edgeskd.runtime.preprocess import preprocess

    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255
    x = preprocess(img, (2, 2), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)
    np.testing.assert_allclose(x[0, 1], -1.0)
    y = preprocess(img, (2, 2), (0.5,) * 3, (0.5,) * 3, input_order="BGR", model_order="RGB")
    np.testing.assert_allclose(y[0, 2], 1.0)
    with pytest.raises(UsageError):
        preprocess(img.astype(np.float32), (2, 2), (0.5,) * 3, (0.5,) * 3)


def test_class_probabilities_sum_subclass_blocks():
    from edgeskd.runtime.postprocess import class_probabilities, softmax

    m = _meta()
    logits = np.array([[1.0, 2.0, 0.5, -1.0, 3.0]], np.float32)
    p = class_probabilities(logits, m)
    ps = softmax(logits)
    np.testing.assert_allclose(p[0], [ps[0, :2].sum(), ps[0, 2:].sum()], rtol=1e-5)


def test_runner_input_checks():
    from edgeskd.runtime.fake import FakeRunner

    with FakeRunner(_meta(), lambda batch: batch.reshape(len(batch), -1)[:, :5], max_batch=4) as r:
        assert r.infer(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 5)
        assert r.infer(np.zeros((1, 3, 32, 32), np.float64)).dtype == np.float32
        for bad in [np.zeros((3, 32, 32), np.float32), np.zeros((1, 3, 16, 32), np.float32),
                    np.zeros((5, 3, 32, 32), np.float32), np.zeros((1, 3, 32, 32), np.uint8)]:
            with pytest.raises(UsageError):
                r.infer(bad)


def test_checkpoint_roundtrip_and_rejects_foreign(tmp_path):
    torch = pytest.importorskip("torch")
    from edgeskd.models import create_model
    from edgeskd.models.checkpoint import model_from_checkpoint, save_checkpoint

    meta = _meta(arch="tiny_cnn", model_name="student-skd")
    model = create_model("tiny_cnn", meta.num_outputs, img_size=meta.input_size[0]).eval()
    p = save_checkpoint(tmp_path / "s.pt", model, meta, config={"lr": 0.1}, metrics={"f1": 50.0}, epoch=3)
    back, m2, ckpt = model_from_checkpoint(p)
    assert m2.to_dict() == meta.to_dict() and ckpt["epoch"] == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    for bad in ("foreign.pt", "junk.pt", "missing.pt"):
        with pytest.raises(ArtifactError):
            model_from_checkpoint(tmp_path / bad)
