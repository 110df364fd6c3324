"""Triton model repository + DeepStream export: every config parsed with Triton's own schema
(``model_config_pb2``) and checked against the model; the DeepStream graph against the runtime."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import numpy as np
import pytest

from edgeskd.errors import ArtifactError, UsageError
from helpers_stream import META, make_onnx

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient (pip install 'edgeskd[serve]')")


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("m") / "tiny.onnx", meta=META.replace(temperature=1.5, threshold=0.7))


def _parse(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(encoding="utf-8"), pb.ModelConfig())


def _graph_io(path: Path) -> tuple[tuple[str, list], tuple[str, list]]:
    import onnx

    g = onnx.load(str(path)).graph
    dims = lambda v: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return (g.input[0].name, dims(g.input[0])), (g.output[0].name, dims(g.output[0]))


def test_cpu_repository_config_parses_and_matches_the_model(tmp_path, onnx_path):
    from edgeskd.serve.repository import meta_from_parameters, write_triton_repository

    r = write_triton_repository(onnx_path, tmp_path / "repo", name="student")
    cfg = _parse(r.config_path)
    (in_name, in_dims), (out_name, out_dims) = _graph_io(r.model_path)
    assert cfg.name == "student" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 8
    assert cfg.input[0].name == in_name and list(cfg.input[0].dims) == in_dims[1:]       # batch axis implicit
    assert cfg.output[0].name == out_name and list(cfg.output[0].dims) == out_dims[1:]
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert cfg.model_warmup[0].inputs[in_name].zero_data and list(cfg.model_warmup[0].inputs[in_name].dims) == in_dims[1:]
    meta = meta_from_parameters({k: v.string_value for k, v in cfg.parameters.items()}, "config")
    assert meta.to_dict() == META.replace(temperature=1.5, threshold=0.7).to_dict()
    assert (r.model_dir / "labels.txt").read_text().split() == META.subclass_names   # one label per output
    assert r.model_path.read_bytes() == onnx_path.read_bytes()


def test_reexport_adds_a_version_and_keeps_the_old(tmp_path, onnx_path):
    from edgeskd.serve.repository import write_triton_repository

    repo = tmp_path / "repo"
    first = write_triton_repository(onnx_path, repo, name="m")
    second = write_triton_repository(onnx_path, repo, name="m")
    assert (first.version, second.version, second.kept_versions) == (1, 2, [1])
    assert (repo / "m" / "1" / "model.onnx").is_file() and (repo / "m" / "2" / "model.onnx").is_file()
    assert not [p for p in (repo / "m").iterdir() if p.name.startswith(".")]        # no staging left
    # a different input size cannot share the config: refused, nothing written
    with pytest.raises(UsageError, match="another input/output"):
        write_triton_repository(_resized(tmp_path), repo, name="m")
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    # --overwrite starts again at version 1
    again = write_triton_repository(_resized(tmp_path), repo, name="m", overwrite=True)
    assert again.version == 1 and sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt", "labels.txt"]


def _resized(tmp_path: Path) -> Path:
    """A model at 48x48 (the others are 32x32)."""
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)).eval()
    p = tmp_path / "m48.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 48, 48), str(p), input_names=["input"], output_names=["subclass_logits"],
                      dynamic_axes={"input": {0: "n"}, "subclass_logits": {0: "n"}}, dynamo=False)
    import onnx

    model = onnx.load(str(p))
    for k, v in META.replace(input_size=(48, 48)).to_props().items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, str(p))
    return p


def test_gpu_onnx_config_uses_the_tensorrt_accelerator_at_int8_for_qdq(tmp_path):
    from edgeskd.serve.repository import write_triton_repository

    q = make_onnx(tmp_path / "q.onnx", meta=META.replace(precision="int8"))
    r = write_triton_repository(q, tmp_path / "repo", name="q", device="cuda:1")
    cfg = _parse(r.config_path)
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU and list(cfg.instance_group[0].gpus) == [1]
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "INT8"


def test_tensorrt_plan_entry_strips_the_header_and_follows_the_profile(tmp_path):
    from edgeskd.runtime.engine_file import EngineHeader, write_engine
    from edgeskd.serve.repository import read_sidecar, write_triton_repository

    header = EngineHeader(meta=META, trt_version="10.3.0", compute_capability=(8, 7), input_name="input",
                          output_name="subclass_logits", min_batch=1, max_batch=16)
    eng = write_engine(tmp_path / "m.engine", b"PLAN-BYTES", header)
    r = write_triton_repository(eng, tmp_path / "repo", name="trt")
    cfg = _parse(r.config_path)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8          # default 8 <= profile max 16
    assert list(cfg.instance_group[0].profile) == ["0"] and cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert r.model_path.name == "model.plan" and r.model_path.read_bytes() == b"PLAN-BYTES"
    assert read_sidecar(r.model_path.parent)["engine_header"]["max_batch"] == 16
    with pytest.raises(UsageError, match="exceeds"):
        write_triton_repository(eng, tmp_path / "repo2", max_batch_size=32)
    with pytest.raises(UsageError, match="GPU only"):
        write_triton_repository(eng, tmp_path / "repo3", device="cpu")
    assert not (tmp_path / "repo2").exists() and not (tmp_path / "repo3").exists()


def test_refuses_foreign_model_folders_and_artifacts_without_metadata(tmp_path, onnx_path):
    from edgeskd.serve.repository import write_triton_repository

    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\n')
    with pytest.raises(UsageError, match="not an edgeskd Triton model"):
        write_triton_repository(onnx_path, tmp_path / "repo", name="m")
    assert (tmp_path / "repo" / "m" / "config.pbtxt").read_text() == 'name: "m"\n'
    bare = make_onnx(tmp_path / "bare.onnx", meta=None)
    with pytest.raises(ArtifactError, match="no edgeskd metadata"):
        write_triton_repository(bare, tmp_path / "repo", name="x")
    assert not (tmp_path / "repo" / "x").exists()


def test_config_strings_are_escaped(tmp_path):
    from edgeskd.serve.repository import meta_from_parameters, write_triton_repository

    meta = META.replace(class_names=['hyper"plastic\\', "adé\nnoma"])
    r = write_triton_repository(make_onnx(tmp_path / "m.onnx", meta=meta), tmp_path / "repo", name="m")
    cfg = _parse(r.config_path)
    assert meta_from_parameters({k: v.string_value for k, v in cfg.parameters.items()}, "c").class_names == \
        meta.class_names


def test_deepstream_export(tmp_path, onnx_path, cli):
    import onnx
    import onnxruntime as ort

    from edgeskd.runtime.loader import load_runner
    from edgeskd.runtime.postprocess import class_probabilities

    meta = META.replace(subclass_temperatures=[1.2, 2.0, 0.8, 1.5], threshold=0.7)
    src = make_onnx(tmp_path / "m.onnx", meta=meta)
    out = tmp_path / "ds"
    res = cli("export", src, "--format", "deepstream", "--out", out, "--max-batch-size", "4")
    assert res.exit_code == 0, res.output
    ini = configparser.ConfigParser()
    ini.read(out / "config_infer_edgeskd.txt")
    p = ini["property"]
    assert (p["network-type"], p["process-mode"], p["network-mode"], p["batch-size"]) == ("1", "1", "0", "4")
    assert (p["net-scale-factor"], p["offsets"], p["model-color-format"]) == ("1.0", "0;0;0", "0")
    assert (out / p["onnx-file"]).is_file() and (out / p["labelfile-path"]).read_text().strip() == "hyperplastic;adenoma"
    assert p["model-engine-file"].startswith("model.onnx_b4_gpu0_") and float(p["classifier-threshold"]) == 0.7
    model = onnx.load(str(out / "model.onnx"))
    assert model.graph.node[-1].op_type == "Softmax" and model.graph.output[0].name == p["output-blob-names"]
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32)).astype(np.float32)
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {model.graph.input[0].name: x})[0]
    mean, std = np.reshape(meta.mean, (1, 3, 1, 1)), np.reshape(meta.std, (1, 3, 1, 1))
    with load_runner(src) as r:
        want = class_probabilities(r.infer(((x / 255.0 - mean) / std).astype(np.float32)), meta)
    np.testing.assert_allclose(got, want, atol=1e-5)
    again = cli("export", src, "--format", "deepstream", "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_export_triton_cli_and_bad_inputs(tmp_path, onnx_path, cli):
    res = cli("export", onnx_path, "--format", "triton", "--out", tmp_path / "repo", "--model-name", "s", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["version"] == 1 and Path(info["files"]["model"]).is_file()
    (tmp_path / "afile").write_text("x")
    bad = cli("export", onnx_path, "--format", "triton", "--out", tmp_path / "afile")
    assert bad.exit_code == 2 and "is a file" in bad.output
    nameless = cli("export", onnx_path, "--format", "triton", "--out", tmp_path / "r2", "--model-name", "a/b")
    assert nameless.exit_code == 2 and not (tmp_path / "r2" / "a").exists()


@pytest.mark.parametrize("classes,s2c,bg", [
    (["hyperplastic", "adenoma", "no_polyp"], [0, 1, 2, 2], 2),
    (["no_polyp", "hyperplastic", "adenoma"], [0, 0, 1, 2], 0),
])
def test_deepstream_graph_composes_presence_like_edgeskd(tmp_path, cli, classes, s2c, bg):
    """A model with a "no polyp" class: the folded graph outputs P(no polyp) (T = 1) at its column and
    the calibrated probabilities conditional on a polyp, times 1 − P(no polyp), at the others — what
    ``class_probabilities`` (and so `edgeskd stream`) computes, not one softmax over all classes."""
    import onnx
    import onnxruntime as ort

    from edgeskd.runtime.loader import load_runner
    from edgeskd.runtime.postprocess import class_probabilities

    meta = META.replace(class_names=classes, subclass_names=["s0", "s1", "s2", "s3"], subclass_to_class=s2c,
                        background_class=bg, subclass_temperatures=[1.3, 0.7, 2.0, 1.1], positive_class=classes.index("adenoma"))
    src = make_onnx(tmp_path / "m.onnx", meta=meta)
    out = tmp_path / "ds"
    res = cli("export", src, "--format", "deepstream", "--out", out)
    assert res.exit_code == 0, res.output
    model = onnx.load(str(out / "model.onnx"))
    x = np.random.default_rng(1).integers(0, 256, (16, 3, 32, 32)).astype(np.float32)
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {model.graph.input[0].name: x})[0]
    mean, std = np.reshape(meta.mean, (1, 3, 1, 1)), np.reshape(meta.std, (1, 3, 1, 1))
    with load_runner(src) as r:
        logits = r.infer(((x / 255.0 - mean) / std).astype(np.float32))
        want = class_probabilities(logits, r.metadata)
    plain = class_probabilities(logits, r.metadata.replace(background_class=None))
    assert np.abs(plain - want).max() > 1e-3          # the one-softmax reading differs: the check can fail
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_deepstream_export_keeps_other_files(tmp_path, onnx_path, cli):
    out = tmp_path / "app"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    res = cli("export", onnx_path, "--format", "deepstream", "--out", out)
    assert res.exit_code == 0, res.output
    again = cli("export", onnx_path, "--format", "deepstream", "--out", out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["config_infer_edgeskd.txt", "labels.txt", "model.onnx", "notes.txt", "sub"]


def test_uint8_activation_qdq_is_refused_for_tensorrt(tmp_path):
    """The U8S8 CPU build (uint8 activations) cannot be a TensorRT engine: exporting it for a GPU
    (Triton's TensorRT accelerator, DeepStream INT8) is one line naming the S8S8 file; int8 passes."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeskd.errors import UsageError
    from edgeskd.quantize.qdq_source import has_uint8_activations
    from edgeskd.serve.repository import check_tensorrt_qdq

    src = make_onnx(tmp_path / "m.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            import onnx
            name = onnx.load(str(src)).graph.input[0].name
            self.it = iter([{name: np.random.default_rng(i).random((1, 3, 32, 32), np.float32)} for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    built = {}
    for tag, act in (("cpu", QuantType.QUInt8), ("qdq", QuantType.QInt8)):
        built[tag] = tmp_path / f"m.int8.{tag}.onnx"
        quantize_static(str(src), str(built[tag]), Reader(), quant_format=QuantFormat.QDQ, activation_type=act,
                        weight_type=QuantType.QInt8)
    assert has_uint8_activations(built["cpu"]) and not has_uint8_activations(built["qdq"])
    assert not has_uint8_activations(src)
    with pytest.raises(UsageError, match=r"uint8 .*give .*m\.int8\.qdq\.onnx"):
        check_tensorrt_qdq(built["cpu"])
    check_tensorrt_qdq(built["qdq"])
