"""`edgeskd info`: tables, JSON, the synth → info round trip for every layout, and bad input as a
one-line error with a non-zero exit code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def _png(path, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_round_trip_counts_and_label_bits_identical_for_every_layout(cli, tmp_path):
    """folder and manifest keep the visual subtypes and give identical counts; MHIST keeps labels,
    votes and the test partition, but its subclasses are vote bins and it carves val out of train
    by those bins, so for MHIST the class counts of train+val and of test are compared."""
    summaries = {}
    for fmt in ("mhist", "folder", "manifest"):
        out = tmp_path / fmt
        assert cli("synth", out, "--n", "300", "--img-size", "32", "--format", fmt).exit_code == 0
        summaries[fmt] = _json(cli("info", out, "--json"))
    ref = summaries["folder"]

    def numbers(s):  # counts by position: MHIST names its classes HP/SSA and subclasses by vote bin
        return [[list(sub.values()) for sub in s["counts"][sp].values()] for sp in ("train", "val", "test")]

    def class_counts(s):  # [train+val, test] per class
        per = {sp: [sum(sub.values()) for sub in s["counts"][sp].values()] for sp in ("train", "val", "test")}
        return [[a + b for a, b in zip(per["train"], per["val"])], per["test"]]

    polyp = sum(ref["class_counts"][sp][c] for sp in ref["class_counts"] for c in ("hyperplastic", "adenoma"))
    for fmt, s in summaries.items():
        assert s["format"] == fmt
        # MHIST is HP vs SSA: it holds the polyp frames only (the no_polyp class is not written)
        assert s["num_images"] == (polyp if fmt == "mhist" else 300) and polyp < 300
        want = [row[:2] for row in class_counts(ref)] if fmt == "mhist" else class_counts(ref)
        assert class_counts(s) == want, fmt
        if fmt != "mhist":
            assert numbers(s) == numbers(ref), fmt
            assert s["label_bits"] == ref["label_bits"], fmt
        assert s["votes"]["histogram"] == ref["votes"]["histogram"], fmt
        assert s["label_noise_rate"] == ref["label_noise_rate"], fmt
    assert ref["class_names"] == ["hyperplastic", "adenoma", "no_polyp"] and ref["background_class"] == "no_polyp"
    assert ref["groups"]["in_several_splits"] == {}
    assert summaries["mhist"]["class_names"] == ["HP", "SSA"]
    assert summaries["mhist"]["subclass_definition"].startswith("MHIST vote bins")
    assert 0.5 < ref["label_bits"] < 2.0  # H(S|C) <= log2(4 subtypes per class)
    assert summaries["manifest"]["groups"]["n_groups"] == ref["groups"]["n_groups"]


def test_info_table(cli, tmp_path):
    out = tmp_path / "s"
    assert cli("synth", out, "--n", "60", "--img-size", "32", "--format", "manifest").exit_code == 0
    r = cli("info", out)
    assert r.exit_code == 0, r.output
    for needle in ("hp_flat_pale", "ad_villous", "train", "val", "test", "extra label bits", "H(S) - H(C)",
                   "annotator votes", "label noise"):
        assert needle in r.output, needle


def test_info_mhist_vote_bins_option(cli, tmp_path):
    out = tmp_path / "m"
    assert cli("synth", out, "--n", "80", "--img-size", "32", "--format", "mhist").exit_code == 0
    s = _json(cli("info", out, "--json", "--vote-bins", "0,1|2,3|4,5|6,7"))
    assert s["subclass_names"] == ["HP_v0-1", "HP_v2-3", "SSA_v4-5", "SSA_v6-7"]
    r = cli("info", out, "--vote-bins", "0|1|2")
    assert r.exit_code == 2 and "vote-bins" in r.output


def _one_line_error(r, code=3):
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert any(ln.startswith("error:") for ln in lines) and "Traceback" not in r.output
    return r.output


def test_info_bad_inputs(cli, tmp_path):
    assert "does not exist" in _one_line_error(cli("info", tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "empty" in _one_line_error(cli("info", tmp_path / "empty"))
    _png(tmp_path / "flat" / "neg" / "a.png")
    _png(tmp_path / "flat" / "pos" / "b.png")
    assert "no subclass folders" in _one_line_error(cli("info", tmp_path / "flat"))
    m = tmp_path / "mh"
    m.mkdir()
    (m / "annotations.csv").write_text("Image Name,Majority Vote Label,Votes,Partition\na.png,HP,1,train\n")
    assert "Number of Annotators" in _one_line_error(cli("info", m))


def test_info_corrupt_image_named_then_skipped(cli, tmp_path):
    root = tmp_path / "d"
    for i in range(6):
        _png(root / "neg" / "a" / f"n{i}.png")
        _png(root / "pos" / "b" / f"p{i}.png")
    (root / "pos" / "b" / "zz_bad.png").write_bytes(b"not an image")
    out = _one_line_error(cli("info", root))
    assert "zz_bad.png" in out and "--skip-bad" in out
    s = _json(cli("info", root, "--json", "--skip-bad"))
    assert s["num_images"] == 12 and len(s["skipped_bad"]) == 1 and s["skipped_bad"][0].endswith("zz_bad.png")


def test_info_warns_about_subclass_missing_from_test(cli, tmp_path):
    root = tmp_path / "d"
    for i in range(6):
        _png(root / "train" / "neg" / "a" / f"a{i}.png")
        _png(root / "train" / "pos" / "b" / f"b{i}.png")
    _png(root / "train" / "neg" / "rare" / "r0.png")
    _png(root / "test" / "neg" / "a" / "ta.png")
    _png(root / "test" / "pos" / "b" / "tb.png")
    r = cli("info", root)
    assert r.exit_code == 0
    assert "warning:" in r.output and "'rare'" in r.output and "none in test" in r.output
