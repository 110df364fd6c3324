"""A new user's bad inputs, across every command, through the real console entry (``main()``):
each is refused with exit != 0 and ONE line on stderr (no traceback, no library warning text), and
nothing is written or changed outside the case's own temporary folder (HOME and the cache point
there too). The time each case takes is printed (`-s`), not asserted: timings are not tests."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from helpers_stream import make_onnx, make_video  # noqa: E402

from edgeskd.meta import ModelMeta  # noqa: E402
from edgeskd.models.checkpoint import save_checkpoint  # noqa: E402
from edgeskd.models.registry import create_model  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Valid and broken inputs, made once (the cases must not change them)."""
    d = tmp_path_factory.mktemp("inputs")
    onnx = make_onnx(d / "m.onnx")
    meta = ModelMeta(class_names=["hp", "ssa"], subclass_names=["a", "b", "c", "d"], subclass_to_class=[0, 0, 1, 1],
                     input_size=(32, 32), arch="tiny_cnn", model_name="student-skd")
    torch.manual_seed(0)
    ckpt = save_checkpoint(d / "student-skd.pt", create_model("tiny_cnn", 4).eval(), meta, config={})
    evil = d / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, evil)
    (d / "notes.txt").write_text("hello")
    trunc = d / "trunc.onnx"
    trunc.write_bytes(onnx.read_bytes()[:200])
    video = make_video(d / "v.mp4", n=8, w=96, h=64)
    data = d / "data"   # a folder tree with one corrupt image
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for cls, sub in (("hp", "a"), ("ssa", "c")):
            (data / split / cls / sub).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / split / cls / sub / f"{split}-{cls}-{i}.png")
    (data / "train" / "hp" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    manifest = d / "manifest.csv"
    manifest.write_text("path,label\nx.png,hp\n")
    mhist = d / "mhist"
    (mhist / "images").mkdir(parents=True)
    (mhist / "annotations.csv").write_text("Image Name,Label\n")
    (d / "empty").mkdir()
    (d / "existing.onnx").write_bytes(b"keep")
    (d / "existing.json").write_text("keep")
    (d / "existing.mp4").write_bytes(b"keep")
    (d / "labels.csv").write_text("frame,class\n0,hp\n")
    (d / "engine.engine").write_bytes(b"EDGESKD-not-really")
    return {"onnx": onnx, "ckpt": ckpt, "evil": evil, "txt": d / "notes.txt", "trunc": trunc, "video": video,
            "data": data, "manifest": manifest, "mhist": mhist, "empty": d / "empty", "root": d,
            "existing_onnx": d / "existing.onnx", "existing_json": d / "existing.json",
            "existing_mp4": d / "existing.mp4", "labels": d / "labels.csv", "engine": d / "engine.engine"}


CASES: list[tuple[str, list[str]]] = [
    # synth
    ("synth out is a file", ["synth", "{txt}"]),
    ("synth out not empty", ["synth", "{data}"]),
    ("synth too few frames", ["synth", "{tmp}/s", "--n", "5"]),
    ("synth tiny size", ["synth", "{tmp}/s", "--img-size", "8"]),
    ("synth unknown format", ["synth", "{tmp}/s", "--format", "bogus"]),
    ("synth unwritable", ["synth", "/proc/edgeskd-test/s"]),
    ("synth negative seed", ["synth", "{tmp}/s", "--seed", "-1"]),
    # synth-video
    ("synth-video bad container", ["synth-video", "{tmp}/v.txt"]),
    ("synth-video bad resolution", ["synth-video", "{tmp}/v.mp4", "--resolution", "x"]),
    ("synth-video resolution 3 parts", ["synth-video", "{tmp}/v.mp4", "--resolution", "1x2x3"]),
    ("synth-video render size", ["synth-video", "{tmp}/v.mp4", "--render-size", "10"]),
    ("synth-video existing", ["synth-video", "{existing_mp4}"]),
    ("synth-video old --size", ["synth-video", "{tmp}/v.mp4", "--size", "64x64"]),
    # info
    ("info missing", ["info", "{tmp}/nothing"]),
    ("info empty dir", ["info", "{empty}"]),
    ("info not a data set", ["info", "{txt}"]),
    ("info manifest columns", ["info", "{manifest}"]),
    ("info mhist header", ["info", "{mhist}"]),
    ("info corrupt image", ["info", "{data}"]),
    ("info vote bins on folder", ["info", "{data}", "--vote-bins", "0|1"]),
    ("info unknown format", ["info", "{data}", "--format", "parquet"]),
    # train
    ("train missing data", ["train", "--data", "{tmp}/nothing", "--out", "{tmp}/run"]),
    ("train corrupt image", ["train", "--data", "{data}", "--out", "{tmp}/run", "--epochs", "1"]),
    ("train unknown student mode", ["train", "--students", "bogus", "--out", "{tmp}/run"]),
    ("train bad device", ["train", "--device", "gpu", "--out", "{tmp}/run"]),
    ("train cuda without gpu", ["train", "--device", "cuda:0", "--out", "{tmp}/run"]),
    ("train zero epochs", ["train", "--epochs", "0", "--out", "{tmp}/run"]),
    ("train tiny img size", ["train", "--img-size", "4", "--out", "{tmp}/run"]),
    ("train alpha > 1", ["train", "--alpha", "2", "--out", "{tmp}/run"]),
    ("train zero temperature", ["train", "--temperature", "0", "--out", "{tmp}/run"]),
    ("train resume without out", ["train", "--resume"]),
    ("train missing config", ["train", "--config", "{tmp}/none.yaml", "--out", "{tmp}/run"]),
    ("train unknown teacher", ["train", "--teacher", "resnet9000", "--out", "{tmp}/run"]),
    ("train out is a file", ["train", "--out", "{txt}"]),
    ("train resume and overwrite", ["train", "--resume", "--overwrite", "--out", "{tmp}/run"]),
    ("train bad subclasses", ["train", "--subclasses", "invent:0", "--out", "{tmp}/run"]),
    ("train missing teacher ckpt", ["train", "--teacher-checkpoint", "{tmp}/t.pt", "--out", "{tmp}/run"]),
    # export
    ("export missing", ["export", "{tmp}/none.pt"]),
    ("export evil pickle", ["export", "{evil}", "--out", "{tmp}/e.onnx"]),
    ("export wrong kind", ["export", "{onnx}", "--out", "{tmp}/e.onnx"]),
    ("export text file", ["export", "{txt}", "--out", "{tmp}/e.onnx"]),
    ("export out suffix", ["export", "{ckpt}", "--out", "{tmp}/e.txt"]),
    ("export bad batch", ["export", "{ckpt}", "--out", "{tmp}/e.onnx", "--batch-size", "zero"]),
    ("export low opset", ["export", "{ckpt}", "--out", "{tmp}/e.onnx", "--opset", "5"]),
    ("export existing", ["export", "{ckpt}", "--out", "{existing_onnx}"]),
    ("export high opset", ["export", "{ckpt}", "--out", "{tmp}/e.onnx", "--opset", "99"]),
    ("export bad device", ["export", "{ckpt}", "--out", "{tmp}/e.onnx", "--device", "gpu"]),
    ("export old --batch", ["export", "{ckpt}", "--batch", "1"]),
    # build-engine
    ("build missing", ["build-engine", "{tmp}/none.onnx"]),
    ("build text file", ["build-engine", "{txt}"]),
    ("build truncated onnx", ["build-engine", "{trunc}"]),
    ("build checkpoint given", ["build-engine", "{ckpt}"]),
    ("build a GPU named, none here", ["build-engine", "{onnx}", "--device", "cuda:7", "--out", "{tmp}/b.onnx"]),
    ("build negative calib seed", ["build-engine", "{onnx}", "--calib-seed", "-1", "--out", "{tmp}/b.onnx"]),
    ("build bad precision", ["build-engine", "{onnx}", "--precision", "int4"]),
    ("build bad calib method", ["build-engine", "{onnx}", "--calib-method", "foo"]),
    ("build negative drop", ["build-engine", "{onnx}", "--max-f1-drop", "-1", "--out", "{tmp}/a.onnx"]),
    ("build out is input", ["build-engine", "{onnx}", "--out", "{onnx}"]),
    ("build engine suffix on cpu", ["build-engine", "{onnx}", "--backend", "onnxruntime", "--out", "{tmp}/a.engine"]),
    ("build existing out", ["build-engine", "{onnx}", "--backend", "onnxruntime", "--out", "{existing_onnx}"]),
    ("build tensorrt on cpu", ["build-engine", "{onnx}", "--device", "cpu", "--backend", "tensorrt"]),
    ("build tensorrt without gpu", ["build-engine", "{onnx}", "--backend", "tensorrt", "--out", "{tmp}/a.engine"]),
    ("build bad device", ["build-engine", "{onnx}", "--device", "banana"]),
    ("build bad img size", ["build-engine", "{onnx}", "--img-size", "3x3"]),
    ("build zero max batch", ["build-engine", "{onnx}", "--max-batch-size", "0", "--out", "{tmp}/a.onnx"]),
    # bench
    ("bench missing", ["bench", "{tmp}/none.onnx", "--out", "{tmp}/b.json"]),
    ("bench unknown file", ["bench", "{txt}", "--out", "{tmp}/b.json"]),
    ("bench empty dir", ["bench", "{empty}", "--out", "{tmp}/b.json"]),
    ("bench bad split", ["bench", "{onnx}", "--split", "foo", "--out", "{tmp}/b.json"]),
    ("bench zero batch", ["bench", "{onnx}", "--batch-sizes", "0", "--out", "{tmp}/b.json"]),
    ("bench letters batch", ["bench", "{onnx}", "--batch-sizes", "a,b", "--out", "{tmp}/b.json"]),
    ("bench existing out", ["bench", "{onnx}", "--out", "{existing_json}"]),
    ("bench out is dir", ["bench", "{onnx}", "--out", "{empty}"]),
    ("bench bad device", ["bench", "{onnx}", "--device", "banana", "--out", "{tmp}/b.json"]),
    ("bench zero threads", ["bench", "{onnx}", "--threads", "0", "--out", "{tmp}/b.json"]),
    # stream
    ("stream no source", ["stream", "--engine", "{onnx}"]),
    ("stream no engine", ["stream", "{video}"]),
    ("stream missing video", ["stream", "{tmp}/none.mp4", "--engine", "{onnx}"]),
    ("stream text as video", ["stream", "{txt}", "--engine", "{onnx}"]),
    ("stream two sources", ["stream", "{video}", "--video", "{txt}", "--engine", "{onnx}"]),
    ("stream missing engine", ["stream", "{video}", "--engine", "{tmp}/none.onnx"]),
    ("stream text engine", ["stream", "{video}", "--engine", "{txt}"]),
    ("stream truncated engine", ["stream", "{video}", "--engine", "{trunc}"]),
    ("stream zero batch", ["stream", "{video}", "--engine", "{onnx}", "--batch-size", "0"]),
    ("stream bad smooth", ["stream", "{video}", "--engine", "{onnx}", "--smooth", "0"]),
    ("stream bad crop", ["stream", "{video}", "--engine", "{onnx}", "--crop", "1,2"]),
    ("stream bad threshold", ["stream", "{video}", "--engine", "{onnx}", "--threshold", "0.2"]),
    ("stream existing out", ["stream", "{video}", "--engine", "{onnx}", "--out", "{existing_mp4}"]),
    ("stream bad out container", ["stream", "{video}", "--engine", "{onnx}", "--out", "{tmp}/a.txt"]),
    ("stream same outputs", ["stream", "{video}", "--engine", "{onnx}", "--jsonl", "{tmp}/a", "--stats", "{tmp}/a"]),
    ("stream engine on cpu", ["stream", "{video}", "--engine", "{engine}", "--device", "cpu"]),
    ("stream cuda preprocess on cpu", ["stream", "{video}", "--engine", "{onnx}", "--device", "cpu",
                                       "--preprocess", "cuda"]),
    ("stream missing labels", ["stream", "{video}", "--engine", "{onnx}", "--labels", "{tmp}/none.csv"]),
    ("stream bad device", ["stream", "{video}", "--engine", "{onnx}", "--device", "tpu"]),
    # predict
    ("predict missing image", ["predict", "{tmp}/none.png", "--engine", "{onnx}"]),
    ("predict video given", ["predict", "{video}", "--engine", "{onnx}"]),
    ("predict no engine", ["predict", "{data}"]),
    ("predict bad out", ["predict", "{data}/test", "--engine", "{onnx}", "--out", "{tmp}/p.xlsx"]),
    ("predict corrupt image", ["predict", "{data}/train", "--engine", "{onnx}", "--out", "{tmp}/p.csv"]),
    ("predict checkpoint on a GPU, none here", ["predict", "{data}/test", "--engine", "{ckpt}", "--device", "cuda:7",
                                                "--out", "{tmp}/p.csv"]),
    # qat
    ("qat missing", ["qat", "{tmp}/none.pt"]),
    ("qat existing out", ["qat", "{ckpt}", "--out", "{existing_onnx}"]),
    ("qat zero epochs", ["qat", "{ckpt}", "--epochs", "0", "--out", "{tmp}/q.onnx"]),
    ("qat out suffix", ["qat", "{ckpt}", "--out", "{tmp}/q.txt"]),
    # the app
    ("unknown command", ["frobnicate"]),
    ("unknown option", ["info", "--frobnicate"]),
    ("quickstart workdir is a file", ["quickstart", "--workdir", "{txt}"]),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("name,argv", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, argv, inputs, tmp_path, monkeypatch, capsys):
    from edgeskd.cli.app import main

    tmp = tmp_path / "case"
    tmp.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("EDGESKD_CACHE_DIR", str(home / ".cache" / "edgeskd"))
    monkeypatch.chdir(tmp)   # default outputs (engines/, runs/, bench.json) would land here
    args = [a.format(tmp=tmp, **inputs) for a in argv]
    before = _snapshot(inputs["root"])
    monkeypatch.setattr(sys, "argv", ["edgeskd", *args])
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        main()
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    with capsys.disabled():
        print(f"\n  {seconds:5.2f} s  exit {exc.value.code}  {name}: {err.strip()[:150]}")
    assert exc.value.code not in (0, None), f"{name}: accepted ({out[-300:]})"
    assert len(lines) == 1, f"{name}: stderr is not one line:\n{err}"
    assert "Traceback" not in err + out and "Warning:" not in err, err
    assert _snapshot(inputs["root"]) == before, f"{name}: changed the inputs"
    written = [p for p in tmp.rglob("*")]
    assert not written, f"{name}: wrote {written}"
    # no data cache of edgeskd's (a refused bench once rendered and cached 141 MB first); other libraries'
    # own files (ONNX Runtime keeps a small database under ~/.cache/Microsoft) are theirs
    assert not [p for p in (home / ".cache" / "edgeskd").rglob("*") if p.is_file()], f"{name}: cached data"


def test_sweep_has_at_least_80_cases():
    assert len(CASES) >= 80



def test_ctrl_c_while_the_app_is_imported_is_one_line(monkeypatch, capsys):
    """The console script catches an interruption that comes while typer, rich and numpy are still
    being imported (before the app's own handler exists): one line, exit 130, no traceback."""
    import sys
    import types

    from edgeskd.cli import entry

    class Importing(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "edgeskd.cli.app", Importing("edgeskd.cli.app"))
    with pytest.raises(SystemExit) as e:
        entry.main()
    assert e.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"
