"""edgeskd predict: images, folders and globs with an artifact → console, CSV / JSONL, annotated PNGs;
the same probabilities as the runtime path; bad input refused before anything is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_stream import make_onnx


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture
def images(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for i, (w, h) in enumerate([(40, 40), (64, 48), (33, 57)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"a{i}.png")
    Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(root / "sub" / "b.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_predict_folder_csv_matches_runtime(cli, onnx_path, images, tmp_path):
    from edgeskd.data.images import read_image
    from edgeskd.runtime.loader import load_runner
    from edgeskd.runtime.postprocess import class_probabilities
    from edgeskd.runtime.preprocess import preprocess_for

    out = tmp_path / "p.csv"
    r = cli("predict", images, "--engine", onnx_path, "--out", out)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert [Path(row["path"]).name for row in rows] == ["a0.png", "a1.png", "a2.png", "b.jpg"]   # recursive, sorted
    with load_runner(onnx_path) as runner:
        meta = runner.metadata
        for row in rows:
            x = preprocess_for(meta, read_image(row["path"])[None])
            p = class_probabilities(runner.infer(x), meta)[0]
            assert row["class"] == meta.class_names[int(p.argmax())]
            for c, v in zip(meta.class_names, p):
                assert abs(float(row[f"p_{c}"]) - v) < 1e-5
    assert "states:" in r.output


def test_predict_glob_jsonl_threshold_and_save(cli, onnx_path, images, tmp_path):
    out, save = tmp_path / "p.jsonl", tmp_path / "annotated"
    r = cli("predict", str(images / "a*.png"), "--engine", onnx_path, "--out", out, "--save", save,
            "--threshold", "0.99")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {"path", "class", "prob", "subclass", "state", "probs"} <= set(rows[0])
    # a threshold of 0.99 on a random model: calls only where the probability reaches it
    for row in rows:
        assert (row["state"] == "low confidence") == (row["prob"] < 0.99)
    pngs = sorted(p.name for p in save.iterdir())
    assert pngs == ["a0.png", "a1.png", "a2.png"]
    assert Image.open(save / "a0.png").size[0] >= 40


@pytest.mark.parametrize("args,needle", [
    (["{missing}"], "does not exist"),
    (["{notes}"], "not an image file"),
    (["{root}/*.gif"], "matches no image"),
    (["{empty}"], "holds no image"),
    (["{root}", "--out", "{tmp}/p.txt"], ".csv or .jsonl"),
    (["{root}", "--threshold", "0.3"], "threshold"),
    (["{root}", "--crop", "auto"], "--crop auto is for video"),
    (["{root}", "--device", "gpu"], "--device 'gpu'"),
])
def test_predict_bad_input_one_line(cli, onnx_path, images, tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    fill = {"missing": tmp_path / "nope.png", "notes": images / "notes.txt", "root": images,
            "empty": tmp_path / "empty", "tmp": tmp_path}
    r = cli("predict", *[a.format(**fill) for a in args], "--engine", onnx_path)
    assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output, r.output


def test_predict_refuses_existing_output_and_writes_nothing_on_a_bad_image(cli, onnx_path, images, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("keep")
    r = cli("predict", images, "--engine", onnx_path, "--out", out)
    assert r.exit_code == 2 and "--overwrite" in r.output and out.read_text() == "keep"
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    out2, save = tmp_path / "q.csv", tmp_path / "ann"
    r = cli("predict", images, "--engine", onnx_path, "--out", out2, "--save", save)
    assert r.exit_code != 0 and "broken.png" in r.output
    assert not out2.exists() and not save.exists()
    assert cli("predict", images / "a0.png", "--engine", onnx_path, "--out", out, "--overwrite").exit_code == 0
    assert out.read_text().startswith("path,class")


def test_predict_says_no_polyp_for_a_background_class_model(cli, tmp_path, images):
    """A model with a "no polyp" class: its state is read as the stream reads a frame (no class call,
    no subclass, when P(background) reaches the presence threshold)."""
    from helpers_stream import META

    from edgeskd.runtime.loader import load_runner
    from edgeskd.runtime.postprocess import class_probabilities
    from edgeskd.data.images import read_image
    from edgeskd.runtime.preprocess import preprocess_for

    meta = META.replace(class_names=["hyperplastic", "adenoma", "no_polyp"],
                        subclass_names=["hp_a", "ad_a", "wall_a", "wall_b"], subclass_to_class=[0, 1, 2, 2],
                        background_class=2, presence_threshold=0.3)
    path = make_onnx(tmp_path / "bg.onnx", meta=meta)
    with load_runner(path) as runner:   # a presence threshold with images on both sides of it
        p_bg = sorted(float(class_probabilities(runner.infer(preprocess_for(meta, read_image(f)[None])), meta)[0, 2])
                      for f in sorted(images.rglob("*.*")) if f.suffix != ".txt")
    cut = (p_bg[1] + p_bg[2]) / 2
    meta = meta.replace(presence_threshold=cut)
    path = make_onnx(tmp_path / "bg.onnx", meta=meta)
    out = tmp_path / "p.jsonl"
    r = cli("predict", images, "--engine", path, "--out", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    seen_polyp = False
    with load_runner(path) as runner:
        for row in rows:
            p = class_probabilities(runner.infer(preprocess_for(meta, read_image(row["path"])[None])), meta)[0]
            empty = p[2] >= cut
            assert (row["state"] == "no polyp") == empty
            assert row["class"] in ("hyperplastic", "adenoma")           # the likelier polyp class
            if empty:
                assert row["subclass"] is None
            else:   # a polyp's subtype, never a kind of bare wall (as the stream shows it)
                assert row["subclass"] in ("hp_a", "ad_a")
                seen_polyp = True
    assert seen_polyp and any(row["state"] == "no polyp" for row in rows)
