"""Data layer: the three file formats, format detection, splits, label bits, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeskd.data import detect_format, load_dataset
from edgeskd.data.base import LabeledSet
from edgeskd.data.mhist import DEFAULT_VOTE_BINS, MHIST_HEADER, parse_vote_bins
from edgeskd.data.splits import VAL_FROM_TRAIN, carve_split, stratified_split
from edgeskd.data.stats import dataset_summary, entropy_bits, label_bits
from edgeskd.errors import DataError, UsageError


def _png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def _folder(root: Path, layout: dict[str, dict[str, int]], split: str = "") -> Path:
    """layout: class → subclass → number of images."""
    k = 0
    for c, subs in layout.items():
        for s, n in subs.items():
            for _ in range(n):
                _png(root / split / c / s / f"{split or 'x'}_{c}_{s}_{k}.png", k % 256)
                k += 1
    return root


def _mhist(root: Path, rows: list[tuple[str, str, str, str]], header: str = MHIST_HEADER,
           make_images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [header] + [",".join(r) for r in rows]
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    if make_images:
        for r in rows:
            if "/" not in r[0] and ".." not in r[0] and r[0]:
                _png(root / "images" / r[0])
    return root


def _mhist_rows(n_per_vote: int = 3) -> list[tuple[str, str, str, str]]:
    rows = []
    for v in range(8):
        for j in range(n_per_vote):
            part = "test" if j == 0 else "train"
            rows.append((f"img_{v}_{j}.png", "SSA" if v >= 4 else "HP", str(v), part))
    return rows


def _manifest(root: Path, rows: list[list[str]], header: str = "path,class,subclass,split,votes",
              make_images: bool = True, name: str = "manifest.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header.split(","))
        w.writerows(rows)
    if make_images:
        for r in rows:
            p = r[0]
            if not p.startswith("/") and ".." not in p:
                _png(root / p)
    return root / name


# ---------------------------------------------------------------------------------------------
# Formats and detection
# ---------------------------------------------------------------------------------------------
def test_folder_tree_without_splits_gets_stratified_70_15_15(tmp_path):
    root = _folder(tmp_path / "d", {"neg": {"a": 20, "b": 20}, "pos": {"c": 20}})
    assert detect_format(root) == "folder"
    ls = load_dataset(root)
    assert ls.format == "folder" and ls.class_names == ["neg", "pos"]
    assert ls.subclass_names == ["a", "b", "c"] and ls.subclass_to_class == [0, 0, 1]
    for s in range(3):  # 20 per subclass → 3 test, round(17 · 0.15/0.85) = 3 val, 14 train
        sp = ls.splits[ls.subclasses == s]
        assert (sp == "test").sum() == 3 and (sp == "val").sum() == 3 and (sp == "train").sum() == 14
    assert ls.info["split_source"].startswith("stratified")
    assert all(p.is_absolute() and p.is_file() for p in ls.paths)
    # Images are read lazily, as uint8 RGB.
    img = ls.load_image(0)
    assert img.dtype == np.uint8 and img.shape == (8, 8, 3)


def test_folder_tree_with_train_test_carves_val_from_train(tmp_path):
    root = tmp_path / "d"
    _folder(root, {"neg": {"a": 17}, "pos": {"b": 17}}, "train")
    _folder(root, {"neg": {"a": 3}, "pos": {"b": 3}}, "test")
    ls = load_dataset(root, seed=1)
    assert (ls.splits == "test").sum() == 6
    assert (ls.splits == "val").sum() == 2 * round(17 * VAL_FROM_TRAIN)
    assert "val carved from train" in ls.info["split_source"]
    # Test images stay test images (the carve only touches train).
    test_names = {p.name for p, s in zip(ls.paths, ls.splits) if s == "test"}
    assert test_names == {p.name for p in (root / "test").rglob("*.png")}


def test_split_seed_changes_members_not_counts(tmp_path):
    root = _folder(tmp_path / "d", {"neg": {"a": 30}, "pos": {"b": 30}})
    a, b, a2 = load_dataset(root, seed=0), load_dataset(root, seed=1), load_dataset(root, seed=0)
    assert list(a.splits) == list(a2.splits)
    assert list(a.splits) != list(b.splits)
    for sp in ("train", "val", "test"):
        assert (a.splits == sp).sum() == (b.splits == sp).sum()


def test_stratified_split_counts_follow_strata_and_carve_reproduces_val():
    strata = np.repeat([0, 1, 2], [100, 7, 1])
    sp = stratified_split(strata, seed=5)
    for s, n in ((0, 100), (1, 7), (2, 1)):
        n_test = int(np.floor(0.15 * n + 0.5))
        n_val = int(np.floor((n - n_test) * VAL_FROM_TRAIN + 0.5))
        assert ((sp == "test") & (strata == s)).sum() == n_test
        assert ((sp == "val") & (strata == s)).sum() == n_val
    # Merge val into train and carve again (what an MHIST round trip does): same val counts.
    pool = sp != "test"
    again = carve_split(strata[pool], seed=99, frac=VAL_FROM_TRAIN, name="val")
    for s in (0, 1, 2):
        assert (again[strata[pool] == s] == "val").sum() == ((sp == "val") & (strata == s)).sum()


def test_mhist_default_bins_and_labels(tmp_path):
    root = _mhist(tmp_path / "m", _mhist_rows())
    assert detect_format(root) == "mhist"
    assert detect_format(root / "annotations.csv") == "mhist"
    ls = load_dataset(root)
    assert ls.class_names == ["HP", "SSA"]
    assert ls.subclass_names == ["HP_v0", "HP_v1-2", "HP_v3", "SSA_v4", "SSA_v5-6", "SSA_v7"]
    want_bin = {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 5}
    assert [want_bin[int(v)] for v in ls.votes] == list(ls.subclasses)
    assert list(ls.labels) == [int(v >= 4) for v in ls.votes]
    assert (ls.splits == "test").sum() == 8 and (ls.splits == "val").sum() > 0
    assert ls.info["vote_disagreements"] == []


def test_votes_count_the_positive_class_named_in_dataset_json(tmp_path):
    """Manifest with votes for 'lesion', whose name sorts first and is not a name the positive-class
    rule knows: without dataset.json the last class ('normal') is positive and the votes contradict
    every label — info says so; naming the positive class fixes the count and silences the warning.
    Called 'adenoma', the class is found by its name."""
    from edgeskd.data.stats import dataset_summary

    rows = [[f"i/{k}.png", "lesion" if k % 2 else "normal", "a" if k % 2 else "n", "train", "6" if k % 2 else "1"]
            for k in range(12)]
    m = _manifest(tmp_path / "m", rows)
    s = dataset_summary(load_dataset(m))
    assert s["positive_class"] == "normal" and s["votes"]["disagree_with_label"] == 12
    assert any("votes disagree with the label on 100%" in w and "dataset.json" in w for w in s["warnings"])
    (tmp_path / "m" / "dataset.json").write_text(json.dumps({"class_names": ["normal", "lesion"],
                                                            "positive_class": "lesion"}))
    s = dataset_summary(load_dataset(m))
    assert s["positive_class"] == "lesion" and s["votes"]["disagree_with_label"] == 0
    assert not any("votes disagree" in w for w in s["warnings"])
    named = [[r[0], "adenoma" if r[1] == "lesion" else r[1], *r[2:]] for r in rows]
    m2 = _manifest(tmp_path / "m2", named)
    s = dataset_summary(load_dataset(m2))
    assert s["positive_class"] == "adenoma" and s["votes"]["disagree_with_label"] == 0


def test_mhist_custom_vote_bins(tmp_path):
    root = _mhist(tmp_path / "m", _mhist_rows())
    ls = load_dataset(root, vote_bins="0,1|2-3|4,5|6,7")
    assert ls.subclass_names == ["HP_v0-1", "HP_v2-3", "SSA_v4-5", "SSA_v6-7"]
    assert ls.subclass_to_class == [0, 0, 1, 1]
    assert parse_vote_bins(None) == DEFAULT_VOTE_BINS


@pytest.mark.parametrize("spec", ["0|1|2", "0,1|1,2|3|4|5,6|7", "0|1,2|3,4|5,6|7", "0|2,1|3|4|5,6|7",
                                  "0|1,2|3|4|5,6|x", "0|1,2|3,4,5,6,7", "0,1,2,3|4|5|6|7|"])
def test_bad_vote_bins(spec):
    with pytest.raises(UsageError, match="vote-bins"):
        parse_vote_bins(spec)


def test_mhist_reports_vote_label_disagreements(tmp_path):
    rows = _mhist_rows() + [("odd_a.png", "HP", "5", "train"), ("odd_b.png", "SSA", "1", "train")]
    ls = load_dataset(_mhist(tmp_path / "m", rows))
    bad = {d["image"]: d for d in ls.info["vote_disagreements"]}
    assert set(bad) == {"odd_a.png", "odd_b.png"}
    names = [p.name for p in ls.paths]
    a, b = names.index("odd_a.png"), names.index("odd_b.png")
    # The label is kept; the subclass is the label's bin nearest to the votes.
    assert ls.class_names[ls.labels[a]] == "HP" and ls.subclass_names[ls.subclasses[a]] == "HP_v3"
    assert ls.class_names[ls.labels[b]] == "SSA" and ls.subclass_names[ls.subclasses[b]] == "SSA_v4"
    assert any("disagree" in w for w in ls.info["warnings"])
    assert dataset_summary(ls)["votes"]["disagree_with_label"] == 2


def test_manifest_with_and_without_splits(tmp_path):
    rows = [[f"img/{c}{i}.png", c, s, sp, str(v)]
            for i, (c, s, sp, v) in enumerate([("neg", "a", "train", 0)] * 6 + [("pos", "b", "train", 7)] * 6
                                               + [("neg", "a", "test", 1), ("pos", "b", "test", 6)])]
    csv_path = _manifest(tmp_path / "m", rows)
    assert detect_format(csv_path) == "manifest" and detect_format(csv_path.parent) == "manifest"
    ls = load_dataset(csv_path)
    assert ls.class_names == ["neg", "pos"] and (ls.splits == "test").sum() == 2
    assert (ls.splits == "val").sum() == 2  # round(6 · 0.176) = 1 per subclass
    assert ls.votes is not None and sorted(set(ls.votes.tolist())) == [0, 1, 6, 7]

    rows2 = [[f"x/{i}.png", "neg" if i % 2 else "pos", "n" if i % 2 else "p"] for i in range(40)]
    ls2 = load_dataset(_manifest(tmp_path / "m2", rows2, header="path,class,subclass"))
    assert ls2.votes is None and (ls2.splits == "test").sum() == 6


def test_manifest_semicolon_separated(tmp_path):
    root = tmp_path / "hk"
    root.mkdir()
    lines = ["path;class;subclass"] + [f"i/{i}.png;{'a' if i < 5 else 'b'};s{i % 2}{'a' if i < 5 else 'b'}"
                                        for i in range(10)]
    (root / "split.csv").write_text("\n".join(lines) + "\n")
    for i in range(10):
        _png(root / "i" / f"{i}.png")
    ls = load_dataset(root / "split.csv")
    assert ls.class_names == ["a", "b"] and len(ls) == 10


def test_sidecar_fixes_class_order(tmp_path):
    root = _folder(tmp_path / "d", {"zeta": {"z": 4}, "alpha": {"a": 4}})
    assert load_dataset(root).class_names == ["alpha", "zeta"]
    (root / "dataset.json").write_text(json.dumps({"class_names": ["zeta", "alpha"]}))
    ls = load_dataset(root)
    assert ls.class_names == ["zeta", "alpha"] and ls.subclass_names == ["z", "a"]


def test_subclass_name_shared_by_two_classes_is_qualified(tmp_path):
    ls = load_dataset(_folder(tmp_path / "d", {"neg": {"flat": 4}, "pos": {"flat": 4}}))
    assert ls.subclass_names == ["neg.flat", "pos.flat"]


# ---------------------------------------------------------------------------------------------
# Label bits
# ---------------------------------------------------------------------------------------------
def test_label_bits_hand_computed():
    # S = [0,0,1,2], C = [0,0,0,1]: H(S) = 1.5 bits, H(C) = H(3/4, 1/4) = 0.811278 bits.
    subs, labels = np.array([0, 0, 1, 2]), np.array([0, 0, 0, 1])
    assert entropy_bits(subs) == pytest.approx(1.5)
    assert entropy_bits(labels) == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    assert label_bits((subs, labels)) == pytest.approx(1.5 - 0.8112781245)
    # H(S|C) directly: C=0 (p 3/4) has S ∈ {0,0,1} → H = 0.918296; C=1 has one subclass → 0.
    h_s_given_c = 0.75 * -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))
    assert label_bits((subs, labels)) == pytest.approx(h_s_given_c)


def test_label_bits_uses_training_split_only():
    ls = LabeledSet(name="t", format="folder", class_names=["a", "b"], subclass_names=["a0", "a1", "b0"],
                    subclass_to_class=[0, 0, 1], labels=[0, 0, 1, 0, 0], subclasses=[0, 1, 2, 0, 0],
                    splits=["train", "train", "train", "test", "test"], images=np.zeros((5, 4, 4, 3), np.uint8))
    # train: S = [0,1,2] uniform → log2(3); C = [0,0,1] → H(2/3,1/3)
    want = np.log2(3) - -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))
    assert label_bits(ls) == pytest.approx(want)
    assert label_bits((np.array([0, 1]), np.array([0, 1]))) == 0.0  # one subclass per class: no extra bits


# ---------------------------------------------------------------------------------------------
# Bad inputs: one DataError each, naming the problem
# ---------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_empty_directory(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path / "e")


def test_class_folder_without_subclass_folders(tmp_path):
    _png(tmp_path / "d" / "neg" / "a.png")
    _png(tmp_path / "d" / "pos" / "b.png")
    with pytest.raises(DataError, match="no subclass folders"):
        load_dataset(tmp_path / "d")


def test_images_next_to_subclass_folders(tmp_path):
    root = _folder(tmp_path / "d", {"neg": {"a": 2}, "pos": {"b": 2}})
    _png(root / "neg" / "stray.png")
    with pytest.raises(DataError, match="outside its subclass folders"):
        load_dataset(root)


def test_subclass_only_in_train_warns(tmp_path):
    root = tmp_path / "d"
    _folder(root, {"neg": {"a": 6, "rare": 2}, "pos": {"b": 6}}, "train")
    _folder(root, {"neg": {"a": 2}, "pos": {"b": 2}}, "test")
    ls = load_dataset(root)
    assert any("'rare'" in w and "none in test" in w for w in ls.info["warnings"])


def test_corrupt_image_named_lazily_and_skipped(tmp_path):
    root = _folder(tmp_path / "d", {"neg": {"a": 8}, "pos": {"b": 8}})
    bad = root / "pos" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ls = load_dataset(root)  # lazy: loads fine, fails when the image is read
    i = [p.name for p in ls.paths].index("broken.png")
    with pytest.raises(DataError, match="broken.png"):
        ls.load_image(i)
    with pytest.raises(DataError, match="broken.png.*--skip-bad"):
        load_dataset(root, verify=True)
    ok = load_dataset(root, skip_bad=True)
    assert len(ok) == 16 and ok.info["skipped_bad"] == [str(bad)]
    assert any("skipped 1 unreadable" in w for w in ok.info["warnings"])


@pytest.mark.parametrize("header,needle", [
    ("Image Name,Majority Vote Label,Partition", "Number of Annotators"),
    ("Image Name,Majority Vote Lable,Number of Annotators who Selected SSA (Out of 7),Partition", "Majority Vote Label"),
])
def test_mhist_missing_or_misspelt_column(tmp_path, header, needle):
    rows = [("a.png", "HP", "0", "train")] if header.count(",") == 3 else [("a.png", "HP", "train")]
    root = _mhist(tmp_path / "m", rows, header=header)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=f"missing.*{needle[:12]}|{needle[:12]}.*missing"):
        load_dataset(root, format="mhist")


@pytest.mark.parametrize("row,needle", [
    (("x.png", "HP", "8", "train"), "outside 0-7"),
    (("x.png", "HP", "-1", "train"), "outside 0-7"),
    (("x.png", "HP", "2.5", "train"), "not an integer"),
    (("x.png", "HP", "two", "train"), "not an integer"),
    (("x.png", "TA", "2", "train"), "unknown label"),
    (("x.png", "HP", "2", "holdout"), "unknown partition"),
    (("../x.png", "HP", "2", "train"), "path separator"),
    (("..", "HP", "2", "train"), "escapes"),
    (("/etc/x.png", "HP", "2", "train"), "path separator"),
])
def test_mhist_bad_rows(tmp_path, row, needle):
    root = _mhist(tmp_path / "m", _mhist_rows(1) + [row])
    with pytest.raises(DataError, match=needle):
        load_dataset(root)


def test_mhist_duplicate_and_missing_images(tmp_path):
    rows = _mhist_rows(1)
    with pytest.raises(DataError, match="duplicate image name 'img_0_0.png'"):
        load_dataset(_mhist(tmp_path / "m", rows + [rows[0]]))
    root = _mhist(tmp_path / "m2", rows)
    (root / "images" / "img_3_0.png").unlink()
    with pytest.raises(DataError, match="not found.*img_3_0.png"):
        load_dataset(root)


@pytest.mark.parametrize("path,needle", [("../outside.png", "escapes"), ("/tmp/abs.png", "absolute"),
                                         ("C:\\data\\x.png", "absolute"), ("a/../../x.png", "escapes")])
def test_manifest_paths_escaping_root(tmp_path, path, needle):
    rows = [["a/1.png", "neg", "n", "train", ""], ["a/2.png", "pos", "p", "train", ""], [path, "pos", "p", "train", ""]]
    with pytest.raises(DataError, match=needle):
        load_dataset(_manifest(tmp_path / "m", rows))


def test_manifest_symlink_escaping_root(tmp_path):
    outside = _png(tmp_path / "outside" / "o.png")
    rows = [["a/1.png", "neg", "n", "", ""], ["a/2.png", "pos", "p", "", ""], ["link.png", "pos", "p", "", ""]]
    csv_path = _manifest(tmp_path / "m", rows, make_images=False)
    _png(tmp_path / "m" / "a" / "1.png")
    _png(tmp_path / "m" / "a" / "2.png")
    (tmp_path / "m" / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match="outside the data set root"):
        load_dataset(csv_path)


def test_manifest_bad_header_rows_and_duplicates(tmp_path):
    ok = [["a/1.png", "neg", "n", "train", "1"], ["a/2.png", "pos", "p", "train", "6"]]
    with pytest.raises(DataError, match="unknown column.*'spilt'"):
        load_dataset(_manifest(tmp_path / "m1", ok, header="path,class,subclass,spilt,votes"))
    with pytest.raises(DataError, match="subclass missing|missing"):
        load_dataset(_manifest(tmp_path / "m2", [r[:2] for r in ok], header="path,class"), format="manifest")
    with pytest.raises(DataError, match="duplicate path"):
        load_dataset(_manifest(tmp_path / "m3", ok + [ok[0]]))
    m3b = _manifest(tmp_path / "m3b", ok)
    (tmp_path / "m3b" / "alias").symlink_to(tmp_path / "m3b" / "a")   # the same file, reached another way
    _manifest(tmp_path / "m3b", ok + [["alias/1.png", "neg", "n", "train", "1"]], make_images=False)
    with pytest.raises(DataError, match="duplicate image file"):
        load_dataset(m3b)
    # the same file name in two folders (per-patient folders of 0001.png ...) is two images
    same_name = ok + [["b/1.png", "pos", "p", "train", "6"]]
    assert len(load_dataset(_manifest(tmp_path / "m3c", same_name), format="manifest")) == 3
    with pytest.raises(DataError, match="votes 9 outside"):
        load_dataset(_manifest(tmp_path / "m4", ok + [["a/3.png", "pos", "p", "train", "9"]]))
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        load_dataset(_manifest(tmp_path / "m5", ok + [["a/3.png", "pos", "p", "holdout", ""]]))
    with pytest.raises(DataError, match="not found"):
        load_dataset(_manifest(tmp_path / "m6", ok + [["a/3.png", "pos", "p", "train", ""]], make_images=False))


def test_duplicate_image_names_in_folder_tree(tmp_path):
    root = tmp_path / "d"
    _png(root / "neg" / "a" / "same.png")
    _png(root / "pos" / "b" / "same.png")
    _png(root / "pos" / "b" / "other.png")
    with pytest.raises(DataError, match="duplicate image name 'same.png'"):
        load_dataset(root)


def test_fewer_than_two_classes(tmp_path):
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(_folder(tmp_path / "d", {"only": {"a": 3, "b": 3}}))
    rows = [[f"a/{i}.png", "only", "a", "", ""] for i in range(4)]
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(_manifest(tmp_path / "m", rows))


def test_format_option_errors(tmp_path):
    root = _folder(tmp_path / "d", {"neg": {"a": 3}, "pos": {"b": 3}})
    with pytest.raises(UsageError, match="vote-bins applies to MHIST"):
        load_dataset(root, vote_bins="0|1,2|3|4|5,6|7")
    with pytest.raises(UsageError, match="synthetic takes no data path"):
        load_dataset(root, format="synthetic")
    with pytest.raises(UsageError, match="unknown data format"):
        load_dataset(root, format="parquet")
    with pytest.raises(DataError, match="not a CSV"):
        load_dataset(_png(tmp_path / "img.png"))


def test_data_layer_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys, edgeskd.data, edgeskd.data.synthetic, edgeskd.data.stats, edgeskd.data.writers, "
            "edgeskd.data.folder, edgeskd.data.mhist, edgeskd.data.manifest; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_in_memory_decodes_files_of_one_shape_within_the_cap(tmp_path):
    root = _folder(tmp_path / "d", {"neg": {"a": 4}, "pos": {"c": 4}})
    ls = load_dataset(root).split("train")
    mem = ls.in_memory(1 << 20)
    assert mem.paths is None and mem.images.shape == (len(ls), 8, 8, 3)
    assert all(np.array_equal(mem.load_image(i), ls.load_image(i)) for i in range(len(ls)))
    assert np.array_equal(mem.labels, ls.labels) and np.array_equal(mem.splits, ls.splits)
    # over the cap, or images of different sizes: left as files
    assert ls.in_memory(8 * 8 * 3 * len(ls) - 1) is ls
    _png(Path(ls.paths[-1]), size=9)
    assert ls.in_memory(1 << 20) is ls
    assert mem.in_memory(0) is mem   # already in memory
