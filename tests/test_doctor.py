"""`edgeskd doctor`: runs and exits 0 anywhere (a CPU machine included), --json, and the decisions
it reports from what it found."""

from __future__ import annotations

import json
import types

import pytest

from edgeskd import doctor


def test_doctor_runs_on_this_machine(cli):
    r = cli("doctor")
    assert r.exit_code == 0, r.output
    for key in ("driver", "cuda-python", "NVRTC", "nvcc", "binding", "TensorRT", "torch", "onnxruntime",
                "build-engine --backend auto", "stream --preprocess auto", "train --device auto"):
        assert key in r.output, key


def test_doctor_json(cli):
    r = cli("doctor", "--json")
    assert r.exit_code == 0
    rep = json.loads(r.output)
    assert {"platform", "driver", "cuda_python", "compilers", "tensorrt", "binding", "torch", "onnxruntime",
            "backends"} <= set(rep)
    uses = {b["what"]: b["uses"] for b in rep["backends"]}
    assert set(uses) == {"build-engine --backend auto", "bench / stream on a .engine", "stream --preprocess auto",
                         "train --device auto"}
    assert all(b["why"] for b in rep["backends"])
    if not rep["driver"]["ok"]:       # a CPU machine: say so, and pick the CPU backends
        assert rep["driver"]["reason"] and rep["driver"]["gpus"] == []
        assert uses["build-engine --backend auto"] == "onnxruntime"
        assert uses["stream --preprocess auto"] == "cpu"
        assert uses["train --device auto"] in ("cpu", "unavailable")


def _report(**over):
    r = {"platform": {"jetson": False}, "driver": {"ok": True, "gpus": [{"compute_capability": "8.7"}], "cuda": "12.6"},
         "tensorrt": {"ok": True, "version": "10.3.0"}, "binding": {"ok": True, "name": "cuda-python"},
         "compilers": {"nvrtc": {"ok": False, "reason": "NVRTC is not available (x)"},
                       "nvcc": {"ok": False, "reason": "not found"}},
         "torch": {"ok": True, "version": "2.5.0", "cuda_build": "12.4", "cuda_available": True, "devices": 1,
                   "amp_grad_scaler": True, "nccl": True}}
    r.update(over)
    return r


def test_decisions_say_why():
    rows = {b["what"]: b for b in doctor.decide(_report())}
    assert rows["build-engine --backend auto"]["uses"] == "tensorrt"
    assert rows["stream --preprocess auto"]["uses"] == "cpu"          # no NVRTC and no nvcc
    assert "no kernel compiler" in rows["stream --preprocess auto"]["why"]
    assert rows["train --device auto"]["uses"] == "cuda" and "GradScaler" in rows["train --device auto"]["why"]
    rows = {b["what"]: b for b in doctor.decide(_report(tensorrt={"ok": False, "reason": "TensorRT is not installed"}))}
    assert rows["build-engine --backend auto"]["uses"] == "onnxruntime"
    assert "TensorRT is not installed" in rows["build-engine --backend auto"]["why"]
    old_torch = {**_report()["torch"], "amp_grad_scaler": False}
    rows = {b["what"]: b for b in doctor.decide(_report(torch=old_torch))}
    assert "torch >= 2.3" in rows["train --device auto"]["why"]


def test_cuda_python_13_on_an_older_driver_is_flagged(monkeypatch):
    pytest.importorskip("cuda.bindings.runtime")
    monkeypatch.setattr(doctor, "_dist_version", lambda *names: "13.0.3")
    p = doctor.probe_cuda_python({"cuda_int": 12080, "cuda": "12.8"})
    assert not p["ok"] and "needs a driver with CUDA 13.0" in p["reason"] and "gpu-cu12" in p["reason"]
    assert doctor.probe_cuda_python({"cuda_int": 13000, "cuda": "13.0"})["ok"]


def test_jetson_is_recognised_and_tensorrt_11_refused_there(tmp_path, monkeypatch):
    tegra = tmp_path / "nv_tegra_release"
    tegra.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    plat = doctor.probe_platform(tegra, model)
    assert plat["jetson"] and plat["l4t"] == "36.4.3" and plat["jetpack"] == "6"
    assert plat["board"] == "NVIDIA Jetson AGX Orin Developer Kit"
    import edgeskd.runtime.tensorrt_runner as tr

    monkeypatch.setattr(tr, "import_tensorrt", lambda: types.SimpleNamespace(__version__="11.4.0"))
    t = doctor.probe_tensorrt(plat)
    assert not t["ok"] and "does not support Jetson" in t["reason"]
    assert doctor.probe_tensorrt({"jetson": False})["ok"]
    assert not doctor.probe_platform(tmp_path / "absent", tmp_path / "absent")["jetson"]


@pytest.mark.gpu
def test_doctor_finds_the_gpu(cli):
    rep = json.loads(cli("doctor", "--json").output)
    assert rep["driver"]["ok"] and rep["driver"]["gpus"], rep["driver"]
    g = rep["driver"]["gpus"][0]
    assert g["name"] and int(g["compute_capability"].split(".")[0]) >= 5 and g["memory_gib"] > 0
    uses = {b["what"]: b["uses"] for b in rep["backends"]}
    assert uses["train --device auto"] == "cuda"
