"""Model zoo: ImageNet weights from local caches (offline), the one-line error when they are missing,
timm models by name, INT8 friendliness, and timm students through export, parity and INT8."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edgeskd.errors import ArtifactError, UsageError  # noqa: E402
from edgeskd.models import create_model  # noqa: E402
from edgeskd.models.weights import hf_snapshot_dir, torchvision_weight_file, torchvision_weights  # noqa: E402
from edgeskd.models.registry import UnknownModelError, list_models  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (torch hub, huggingface_hub) fails at once, as on an offline machine."""
    def refuse(*a, **kw):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf"


def _random_state(model):
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in model.state_dict().items()}


# -- torchvision ImageNet weights ---------------------------------------------------------
def test_imagenet_weights_from_torch_home_offline(torch_home, no_network):
    from torchvision.models import resnet18

    w = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"   # torchvision's own file name
    assert torchvision_weight_file(torchvision_weights("resnet18")) == w
    w.parent.mkdir(parents=True)
    state = _random_state(resnet18())
    torch.save(state, w)
    m = create_model("resnet18", 6, pretrained="imagenet")
    torch.testing.assert_close(m.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(m.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert m.fc.weight.shape == (6, 512)       # the head is new, not ImageNet's 1000 classes
    # the same file under the right name but for another architecture is refused, not half-loaded
    from torchvision.models import resnet50

    torch.save(resnet50().state_dict(), w)
    with pytest.raises(ArtifactError, match="do not fit"):
        create_model("resnet18", 6, pretrained="imagenet")
    w.write_bytes(b"truncated download")
    with pytest.raises(ArtifactError, match=f"cannot read cached weights {w}.*delete it"):
        create_model("resnet18", 6, pretrained="imagenet")


def test_imagenet_weights_missing_offline_names_file_and_folder(torch_home, no_network):
    t0 = time.monotonic()
    with pytest.raises(ArtifactError) as e:
        create_model("mobilenet_v3_small", 4, pretrained="imagenet")
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    folder = torch_home / "hub" / "checkpoints"
    assert "\n" not in msg and "mobilenet_v3_small-047dcff4.pth" in msg and f"{folder}/" in msg
    assert "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth" in msg
    assert "network disabled" in msg and "TORCH_HOME" in msg
    assert not torch_home.exists()                                     # nothing half-written, no empty folders
    with pytest.raises(UsageError, match="tiny_cnn has no ImageNet weights"):
        create_model("tiny_cnn", 4, pretrained="imagenet")


# -- timm models and their ImageNet weights ---------------------------------------------------
@pytest.mark.parametrize("layout", ["main", "commit"])
def test_timm_imagenet_weights_from_hf_cache_offline(hf_home, monkeypatch, no_network, layout):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "timm/mobilenetv3_small_050.lamb_in1k"      # the architecture's default tag
    state = _random_state(timm.create_model("mobilenetv3_small_050"))
    if layout == "main":       # what the offline error tells a user to do by hand
        snap = hf_snapshot_dir(repo)
    else:                      # what huggingface_hub writes: refs/main → snapshots/<commit>
        root = hf_home / "hub" / "models--timm--mobilenetv3_small_050.lamb_in1k"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text("0123abcd" * 5)
        snap = root / "snapshots" / ("0123abcd" * 5)
    snap.mkdir(parents=True)
    save_file(state, str(snap / "model.safetensors"))
    m = create_model("timm:mobilenetv3_small_050", 4, pretrained="imagenet")
    torch.testing.assert_close(m.conv_stem.weight, state["conv_stem.weight"])
    torch.testing.assert_close(m.blocks[2][0].conv_pw.weight, state["blocks.2.0.conv_pw.weight"])
    assert m.get_classifier().weight.shape == (4, 1024)
    with torch.no_grad():
        assert m.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    if layout == "main":     # a file for another architecture, then a truncated one: one line each
        save_file(_random_state(timm.create_model("resnet10t")), str(snap / "model.safetensors"))
        with pytest.raises(ArtifactError, match=f"cannot load {snap}/model.safetensors into timm:mobilenetv3_small_050"):
            create_model("timm:mobilenetv3_small_050", 4, pretrained="imagenet")
        (snap / "model.safetensors").write_bytes(b"junk")
        with pytest.raises(ArtifactError, match="delete it and run again"):
            create_model("timm:mobilenetv3_small_050", 4, pretrained="imagenet")


@pytest.mark.parametrize("offline_env", [True, False])
def test_timm_imagenet_weights_missing_names_file_and_folder(hf_home, monkeypatch, no_network, offline_env):
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.monotonic()
    with pytest.raises(ArtifactError) as e:
        create_model("timm:resnet10t", 3, pretrained="imagenet")
    assert time.monotonic() - t0 < 15
    msg = str(e.value)
    folder = hf_home / "hub" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "main"
    assert "\n" not in msg and "put model.safetensors" in msg and f"in {folder}/" in msg
    assert "https://huggingface.co/timm/resnet10t.c3_in1k/resolve/main/model.safetensors" in msg
    assert ("HF_HUB_OFFLINE" in msg) == offline_env


def test_timm_model_by_name_local_backbone_and_stats(tmp_path):
    from edgeskd.models.timm_models import timm_input_stats

    src = create_model("timm:resnet10t", 5)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = create_model("timm:resnet10t", 3, pretrained=tmp_path / "w.pt")
    torch.testing.assert_close(dst.conv1[0].weight, src.conv1[0].weight)
    assert dst.fc.weight.shape == (3, 512)
    assert timm_input_stats("timm:resnet10t") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert timm_input_stats("timm:inception_v3.tf_in1k")[0] == (0.5, 0.5, 0.5)


def test_unknown_names_list_both_registries():
    with pytest.raises(UnknownModelError) as e:
        create_model("resnet34", 2)
    msg = str(e.value)
    assert f"valid names: {', '.join(list_models())}" in msg and "resnet18" in msg and "tiny_cnn" in msg
    assert "timm:NAME for any of timm's" in msg and "timm:mobilenetv3_small_100" in msg
    assert "did you mean timm:resnet34" in msg and "\n" not in msg
    with pytest.raises(UnknownModelError, match=r"unknown timm model 'resnet5O'.*tiny_cnn.*did you mean .*timm:resnet50"):
        create_model("timm:resnet5O", 2)
    with pytest.raises(UnknownModelError, match="timm:resnet50 has no weight tag 'bogus'; its tags: .*a1_in1k"):
        create_model("timm:resnet50.bogus", 2)
    with pytest.raises(ValueError):     # still a ValueError for library callers
        create_model("timm:", 2)


@pytest.mark.parametrize("flag, name, role", [("--teacher", "vgg99", "teacher"),
                                              ("--student", "timm:mobilenetv9", "student")])
def test_train_unknown_name_lists_both_registries(cli, tmp_path, flag, name, role):
    from test_train import TINY, _assert_one_line_error

    r = cli("train", *TINY, flag, name, "--out", tmp_path / "o")
    kind = f"timm {role} model 'mobilenetv9'" if name.startswith("timm:") else f"{role} model '{name}'"
    _assert_one_line_error(r, f"unknown {kind}", f"valid names: {', '.join(list_models())}",
                           f"({role}s: {', '.join(list_models(role))})", "timm:NAME for any of timm's")
    assert r.exit_code == 2 and not (tmp_path / "o").exists()


# -- INT8 / TensorRT friendliness ------------------------------------------------------------
def test_int8_friendliness_read_off_the_model():
    from edgeskd.models.zoo import (TIMM_INT8_FRIENDLY, TIMM_STUDENTS, int8_concerns, int8_friendly_students,
                                    int8_warning, model_int8_concerns)

    assert model_int8_concerns("tiny_cnn") == () and model_int8_concerns("timm:mobilenetv4_conv_small") == ()
    assert {"hard-swish", "squeeze-excitation"} <= set(model_int8_concerns("mobilenet_v3_small"))
    assert {"hard-swish", "squeeze-excitation"} <= set(model_int8_concerns("timm:mobilenetv3_small_050"))
    assert model_int8_concerns("efficientnet_b0") == ("SiLU/swish", "squeeze-excitation")
    attn = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.MultiheadAttention(8, 2), torch.nn.GELU())
    assert int8_concerns(attn) == ["GELU", "LayerNorm", "attention"]
    friendly = int8_friendly_students()
    assert "tiny_cnn" in friendly and "timm:mobilenetv4_conv_small" in friendly
    assert "mobilenet_v3_small" not in friendly and "timm:mobilenetv3_small_050" not in friendly
    # the warning's list of timm students is what the built models say
    assert [n for n in friendly if n not in list_models()] == [n for n in TIMM_STUDENTS if n in TIMM_INT8_FRIENDLY]
    assert int8_warning("tiny_cnn") is None
    w = int8_warning("timm:mobilenetv3_small_050")
    assert "hard-swish" in w and "tiny_cnn" in w and "\n" not in w


# -- timm students: export, ONNX parity, INT8 ------------------------------------------------------
@pytest.mark.parametrize("arch", ["timm:mobilenetv3_small_050", "timm:mobilenetv4_conv_small"])
def test_timm_student_export_parity_int8(tmp_path, arch):
    import onnx
    from test_export import tiny_set

    from edgeskd.engine.build import build_engine
    from edgeskd.export.onnx_export import export_onnx
    from edgeskd.meta import ModelMeta
    from edgeskd.models.checkpoint import save_checkpoint
    from edgeskd.quantize.qdq import inspect_qdq
    from edgeskd.runtime.loader import load_runner
    from edgeskd.runtime.torch_runner import TorchRunner

    torch.manual_seed(0)
    meta = ModelMeta(class_names=["hp", "ssa"], subclass_names=list("abcde"), subclass_to_class=[0, 0, 1, 1, 1],
                     input_size=(32, 32), arch=arch, output="subclass_logits", model_name="student-skd")
    m = create_model(arch, meta.num_outputs).train()
    with torch.no_grad():          # realistic BatchNorm statistics
        for _ in range(3):
            m(torch.rand(16, 3, 32, 32) * 4 - 2)
    ckpt = save_checkpoint(tmp_path / "student-skd.pt", m.eval(), meta)
    ls = tiny_set(120)     # 40 training images: one calibration batch
    res = export_onnx(ckpt, tmp_path / "student-skd.onnx", dataset=ls, parity_samples=16)
    assert res.parity.ok and res.parity.n == 16, res.parity
    onnx.checker.check_model(onnx.load(str(res.path)), full_check=True)
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(load_runner(res.path).infer(x), TorchRunner(ckpt).infer(x), atol=1e-4)
    assert onnx.load(str(res.path)).graph.output[0].name == "subclass_logits"

    rep = build_engine(res.path, backend="onnxruntime", dataset=ls, calib_dir=tmp_path / "calib", threads=1,
                       time_seconds=0.05, force=True)
    q = tmp_path / "student-skd.int8.qdq.onnx"
    assert q.is_file() and inspect_qdq(q).problems() == [] and inspect_qdq(q).quantized_convs > 10
    assert {"s8s8", "u8s8"} <= {c.name for c in rep.candidates}
    from edgeskd.export.onnx_export import parity_images

    xi, _ = parity_images(ls, res.meta, 40)    # the data's own images, through the deployed preprocessing
    with load_runner(q) as r, load_runner(res.path) as f:
        assert r.metadata.precision == "int8" and r.metadata.arch == arch
        a, b = f.infer(xi), r.infer(xi)
    assert b.shape == (40, 5) and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99   # INT8 tracks FP32


# -- through `edgeskd train` ------------------------------------------------------------------
def _one_epoch(*extra):
    from test_train import TINY

    return ("train", *TINY, "--epochs", "1", "--teacher-epochs", "1", *extra)


def test_train_imagenet_weights_from_torch_home_offline(cli, tmp_path, torch_home, no_network):
    """--pretrained imagenet / --student-pretrained imagenet resolve torchvision's file names in a
    temporary TORCH_HOME with no network; the run starts from those weights (LR ~0: they stay)."""
    from torchvision.models import mobilenet_v3_small, resnet18

    from edgeskd.models.checkpoint import load_checkpoint

    states = {}
    for name, build in (("resnet18", resnet18), ("mobilenet_v3_small", mobilenet_v3_small)):
        f = torchvision_weight_file(torchvision_weights(name))
        f.parent.mkdir(parents=True, exist_ok=True)
        states[name] = _random_state(build())
        torch.save(states[name], f)
    out = tmp_path / "run"
    r = cli(*_one_epoch("--teacher", "resnet18", "--pretrained", "imagenet", "--student", "mobilenet_v3_small",
                        "--student-pretrained", "imagenet", "--students", "skd", "--teacher-lr", "1e-9",
                        "--lr", "1e-9", "--out", out))
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.output.splitlines() if "student mobilenet_v3_small has" in ln]
    assert len(warned) == 1 and "hard-swish" in warned[0] and "tiny_cnn" in warned[0], r.output
    t = load_checkpoint(out / "teacher.pt")["state_dict"]
    s = load_checkpoint(out / "student-skd.pt")["state_dict"]
    torch.testing.assert_close(t["conv1.weight"], states["resnet18"]["conv1.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(s["features.0.0.weight"], states["mobilenet_v3_small"]["features.0.0.weight"],
                               atol=1e-6, rtol=0)
    assert t["fc.weight"].shape[1] == 512 and t["fc.weight"].shape[0] != 1000      # a new head
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert cfg["pretrained"] == cfg["student_pretrained"] == "imagenet"


def test_train_missing_imagenet_weights_is_one_line_and_writes_nothing(cli, tmp_path, torch_home, hf_home,
                                                                      no_network, monkeypatch):
    from test_train import _assert_one_line_error

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = torch_home / "hub" / "checkpoints"
    cases = [
        (_one_epoch("--pretrained", "imagenet"), ["put resnet18-f37072fd.pth", f"in {folder}/", "TORCH_HOME"]),
        (["train", "--preset", "gpu", "--device", "cpu"], ["put resnet50-11ad3fa6.pth", f"in {folder}/"]),
        (_one_epoch("--student", "timm:resnet10t", "--student-pretrained", "imagenet"),
         ["timm:resnet10t", "put model.safetensors",
          f"in {hf_home / 'hub' / 'models--timm--resnet10t.c3_in1k' / 'snapshots' / 'main'}/"]),
    ]
    for args, needles in cases:
        out = tmp_path / "never"
        t0 = time.monotonic()
        r = cli(*args, "--out", out)
        assert time.monotonic() - t0 < 30
        _assert_one_line_error(r, *needles)
        assert r.exit_code == 4 and not out.exists()
    assert not torch_home.exists()                                      # no download left half-done, no folders
    r = cli(*_one_epoch("--pretrained", tmp_path / "nope.pt"), "--out", tmp_path / "never")
    _assert_one_line_error(r, f"--pretrained {tmp_path / 'nope.pt'} does not exist")
    assert r.exit_code == 2 and not (tmp_path / "never").exists()


def test_gpu_preset_and_weights_keywords():
    from edgeskd.distill.config import resolve_config

    cfg = resolve_config({"preset": "gpu"})
    assert (cfg.img_size, cfg.teacher, cfg.pretrained, cfg.student_pretrained, cfg.device) == (
        224, "resnet50", "imagenet", "imagenet", "cuda")
    assert cfg.student.startswith("timm:mobilenet") and cfg.amp in (None, True)
    assert cfg.teacher_lr < resolve_config({}).teacher_lr             # fine-tuning, not from scratch
    cfg = resolve_config({"preset": "gpu", "pretrained": "none", "student_pretrained": "ImageNet"})
    assert cfg.pretrained is None and cfg.student_pretrained == "imagenet"


def test_train_timm_teacher_and_student_then_export_parity(cli, tmp_path):
    """timm:NAME teacher and student through train (1 epoch, tiny data), then export + parity."""
    import onnx

    from edgeskd.runtime.loader import load_runner
    from edgeskd.runtime.torch_runner import TorchRunner

    out = tmp_path / "run"
    r = cli(*_one_epoch("--teacher", "timm:resnet10t", "--student", "timm:mobilenetv4_conv_small",
                        "--students", "kd,skd", "--out", out))
    assert r.exit_code == 0, r.output
    assert "INT8 PTQ" not in r.output                                   # an INT8-friendly student: no warning
    m = json.loads((out / "metrics.json").read_text())["models"]
    assert (m["teacher"]["arch"], m["student-skd"]["arch"]) == ("timm:resnet10t", "timm:mobilenetv4_conv_small")
    for name in ("teacher", "student-skd", "student-kd"):
        onx = tmp_path / f"{name}.onnx"
        r = cli("export", out / f"{name}.pt", "--out", onx, "--json", "--parity-samples", "16")
        assert r.exit_code == 0, r.output
        info = json.loads(r.output)
        assert info["parity"]["max_abs_diff"] <= 1e-4 and info["parity"]["top1_agreement"] == 1.0
        onnx.checker.check_model(onnx.load(str(onx)), full_check=True)
        x = np.random.default_rng(2).normal(size=(3, 3, 32, 32)).astype(np.float32)
        with load_runner(onx) as runner:
            assert runner.metadata.arch == m[name]["arch"]
            np.testing.assert_allclose(runner.infer(x), TorchRunner(out / f"{name}.pt").infer(x), atol=1e-4)
