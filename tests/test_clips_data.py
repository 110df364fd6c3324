"""The video-first synthetic default (frames of clips, a no_polyp class, groups, splits by clip),
group splits and leakage checks, manifests with groups, and `edgeskd frames`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from edgeskd.data import load_dataset
from edgeskd.data import synthetic as sy
from edgeskd.data.base import LabeledSet
from edgeskd.data.clips import BACKGROUND_SHARE, FRAMES_PER_POLYP, circle_visible
from edgeskd.data.splits import group_split, straddling_groups
from edgeskd.errors import DataError, UsageError


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESKD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def clip_set():
    return sy.make_synthetic(400, 32, seed=1)


def test_clip_set_counts_classes_and_groups(clip_set):
    ls = clip_set
    assert ls.class_names == ["hyperplastic", "adenoma", "no_polyp"] and ls.background_class == 2
    assert ls.subclass_names[:8] == list(sy.POLYP_SUBCLASS_NAMES)
    assert ls.subclass_names[8:] == ["mucosa_plain", "mucosa_lumen", "mucosa_blurred"]
    assert np.array_equal(np.asarray(ls.subclass_to_class)[ls.subclasses], ls.labels)
    bg = ls.labels == 2
    assert abs(bg.mean() - BACKGROUND_SHARE) < 0.01
    assert set(np.unique(ls.subclasses[bg])) == {8, 9, 10}            # every kind of bare wall occurs
    assert (ls.votes[bg] == -1).all() and (ls.votes[~bg] >= 0).all()  # wall frames: votes unknown
    # groups: each polyp is one group of FRAMES_PER_POLYP frames with one label, subclass and vote count
    for g in np.unique(ls.groups[~bg]):
        rows = ls.groups == g
        assert rows.sum() <= FRAMES_PER_POLYP and str(g).endswith("/polyp0")
        assert len(set(ls.labels[rows])) == len(set(ls.subclasses[rows])) == len(set(ls.votes[rows])) == 1
    assert all(str(g).endswith("/wall0") for g in ls.groups[bg])
    # several frames of one polyp would be different views (camera moved), not copies
    from edgeskd.data import clips

    monkey = clips.FRAMES_PER_POLYP
    try:
        clips.FRAMES_PER_POLYP = 3
        d = clips.render_clip_set(60, 32, 0)
    finally:
        clips.FRAMES_PER_POLYP = monkey
    g = d["groups"][d["labels"] != 2][0]
    imgs = d["images"][d["groups"] == g].astype(int)
    assert len(imgs) == 3 and np.abs(imgs[0] - imgs[1]).mean() > 5


def test_half_of_the_clips_carry_overlay_text():
    """Text on every frame became a cue the student leaned on (the video's field of view has none):
    about OVERLAY_SHARE of the clips carry it, all of a clip's frames alike."""
    from edgeskd.data import clips

    seeds = np.array([sy.sample_seed(0, clips._CLIP_OFFSET + c) for c in range(2000)])
    share = clips.has_overlay(seeds).mean()
    assert abs(share - clips.OVERLAY_SHARE) < 0.04
    d = clips.render_clip_set(200, 48, 2)
    plain = sy.apply_endoscope_look
    try:   # the same frames with the text switched off: they differ exactly where it was stamped
        sy.apply_endoscope_look = lambda *a, **k: plain(*a, **{**k, "text": False})
        bare = clips.render_clip_set(200, 48, 2)
    finally:
        sy.apply_endoscope_look = plain
    diff = d["images"] != bare["images"]
    text = diff.any((1, 2, 3))
    assert (d["images"][diff] == 215).all()
    overlay = d["overlay"]
    assert list(text) == list(overlay) and 0.3 < overlay.mean() < 0.7


def test_clip_set_splits_keep_clips_whole(clip_set):
    ls = clip_set
    assert straddling_groups(ls.groups, ls.splits) == {}
    clips = np.array([g.split("/")[0] for g in ls.groups])
    assert straddling_groups(clips, ls.splits) == {}                  # a clip's wall goes with its polyp
    n = {s: int((ls.splits == s).sum()) for s in ("train", "val", "test")}
    assert 0.4 < n["train"] / len(ls) < 0.6 and 0.25 < n["test"] / len(ls) < 0.42   # 1/2 : 1/6 : 1/3
    assert 0.1 < n["val"] / len(ls) < 0.23
    for s in ("train", "val", "test"):
        assert set(ls.labels[ls.splits == s]) == {0, 1, 2}


def test_clip_set_is_deterministic_and_labels_do_not_depend_on_size():
    a, b = sy.make_synthetic(60, 32, seed=3), sy.make_synthetic(60, 32, seed=3)
    assert a.images.tobytes() == b.images.tobytes() and list(a.groups) == list(b.groups)
    c = sy.make_synthetic(60, 48, seed=3)
    assert list(c.labels) == list(a.labels) and list(c.splits) == list(a.splits)
    assert not np.array_equal(sy.make_synthetic(60, 32, seed=4).labels, a.labels)


def test_default_load_is_the_clip_set_and_the_cache_keeps_groups(tmp_path):
    ls = load_dataset(None, synthetic_n=300, img_size=128)
    assert list((tmp_path / "cache").glob("synthetic-*.npz"))
    again = load_dataset(None, synthetic_n=300, img_size=128)
    assert again.background_class == 2 and list(again.groups) == list(ls.groups)
    assert list(again.splits) == list(ls.splits) and "clip" in again.info["split_source"]


def test_old_still_image_layout_stays_reachable():
    old = sy.make_synthetic_images(40, 32, seed=0)
    assert old.class_names == ["hyperplastic", "adenoma"] and old.background_class is None and old.groups is None


def test_circle_visible():
    assert circle_visible(np.array([0.0]), np.array([0.2]), 1.0)[0] == 1.0
    assert circle_visible(np.array([3.0]), np.array([0.2]), 1.0)[0] == 0.0
    half = circle_visible(np.array([1.0]), np.array([0.01]), 1.0)[0]
    assert 0.45 < half < 0.55                                          # a small disc on the rim: half in


# ----------------------------------------------------------------------------------------------
# group splits
# ----------------------------------------------------------------------------------------------
def test_group_split_keeps_groups_whole_and_stratifies():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"v{i // 10}/p{i}" for i in range(200)], rng.integers(1, 8, 200))
    strata = np.array([hash(g) % 4 for g in groups])
    sp = group_split(strata, groups, seed=0)
    assert straddling_groups(groups, sp) == {}
    for s, want in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(np.mean(sp == s) - want) < 0.03
        for k in range(4):
            assert abs(np.mean(sp[strata == k] == s) - want) < 0.1
    assert list(group_split(strata, groups, seed=0)) == list(sp)       # seeded
    # a handful of groups still fills all three splits
    few = np.repeat(["a", "b", "c", "d", "e", "f"], 5)
    assert set(group_split(np.zeros(30), few, seed=1)) == {"train", "val", "test"}


def test_straddling_groups_found():
    found = straddling_groups(np.array(["a", "a", "b", "c", "c"]), np.array(["train", "test", "train", "val", "val"]))
    assert found == {"a": ["test", "train"]}


def _manifest(tmp_path, header, rows):
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    for r in rows:
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / r[0])
    p = tmp_path / "m.csv"
    p.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return p


def test_manifest_group_column_splits_by_group_and_reports_leaks(tmp_path):
    rows = [[f"img/{i}.png", "ad" if i % 2 else "hp", "a" if i % 2 else "h", f"pt{i // 4}"] for i in range(80)]
    p = _manifest(tmp_path, ["path", "class", "subclass", "patient"], rows)
    with pytest.raises(DataError, match="no such column; the columns are path,class,subclass,patient"):
        load_dataset(p, group_by="group")
    with pytest.raises(DataError, match="unknown column"):
        load_dataset(p)                                                # patient is not a column we know
    ls = load_dataset(p, group_by="patient")
    assert ls.groups is not None and straddling_groups(ls.groups, ls.splits) == {}
    assert "by group" in ls.info["split_source"]
    with pytest.raises(UsageError, match="manifest"):
        load_dataset(None, group_by="patient")
    # a given split that puts one group in two splits: a warning, and info's summary lists it
    rows2 = [r[:3] + [r[3], "train" if i % 4 else "test"] for i, r in enumerate(rows)]
    p2 = _manifest(tmp_path, ["path", "class", "subclass", "group", "split"], rows2)
    leaky = load_dataset(p2)
    assert any("more than one split" in w for w in leaky.info["warnings"])
    from edgeskd.data.stats import dataset_summary

    assert len(dataset_summary(leaky)["groups"]["in_several_splits"]) == 20


def test_manifest_background_class_goes_last_and_sidecar_names_it(tmp_path):
    rows = [[f"img/{i}.png", ["zeta", "alpha", "no_polyp"][i % 3], "s", f"g{i}"] for i in range(60)]
    ls = load_dataset(_manifest(tmp_path, ["path", "class", "subclass", "group"], rows))
    assert ls.class_names == ["alpha", "zeta", "no_polyp"] and ls.background_class == 2
    (tmp_path / "dataset.json").write_text(json.dumps({"background_class": "zeta"}))
    assert load_dataset(tmp_path / "m.csv").class_names[-1] == "zeta"
    (tmp_path / "dataset.json").write_text(json.dumps({"background_class": "nope"}))
    with pytest.raises(DataError, match="background_class 'nope'"):
        load_dataset(tmp_path / "m.csv")


def test_labeled_set_subsets_groups():
    ls = LabeledSet("x", "manifest", ["a", "b"], ["a", "b"], [0, 1], np.array([0, 1, 0]), np.array([0, 1, 0]),
                    np.array(["train"] * 3), images=np.zeros((3, 2, 2, 3), np.uint8), groups=np.array(["g", "h", "g"]),
                    background_class=1)
    sub = ls.subset(np.array([False, True, True]))
    assert list(sub.groups) == ["h", "g"] and list(ls.polyp_mask) == [True, False, True]


# ----------------------------------------------------------------------------------------------
# `edgeskd frames`
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video(tmp_path_factory):
    pytest.importorskip("av")
    from edgeskd.data.synthvideo import write_synth_video

    d = tmp_path_factory.mktemp("vid")
    info = write_synth_video(d / "clip.mp4", seconds=24, fps=5, size=(160, 96), seed=2, render_size=64)
    return d / "clip.mp4", d / "clip.labels.csv", info


def test_frames_writes_a_grouped_manifest_that_trains_by_group(video, tmp_path, cli):
    vid, lab, info = video
    out = tmp_path / "fr"
    r = cli("frames", vid, "--labels", lab, "--every", "2", "--out", out)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert list(rows[0]) == ["path", "class", "subclass", "group"] and len(rows) == (info["frames"] + 1) // 2
    truth = list(csv.DictReader(lab.open()))
    for row in rows:
        t = truth[int(row["path"].split("/")[-1].split(".")[0])]
        assert row["class"] == t["class"] and row["subclass"] == t["subclass"]
        want = f"clip/polyp{t['polyp_id']}" if t["has_polyp"] == "1" else "clip/nopolyp"
        assert row["group"].startswith(want)
    ls = load_dataset(out / "manifest.csv")
    assert ls.class_names == ["hyperplastic", "adenoma", "no_polyp"] and ls.background_class == 2
    assert ls.info["positive_class"] == "adenoma" and straddling_groups(ls.groups, ls.splits) == {}
    crop = ls.load_image(0)
    assert abs(crop.shape[0] - crop.shape[1]) <= 6 and crop.shape[1] < 120  # the square field, not the 160x96 frame
    r = cli("info", out / "manifest.csv")
    assert r.exit_code == 0 and "in more than one split: 0" in r.output
    r = cli("frames", vid, "--labels", lab, "--out", out)
    assert r.exit_code == 2 and "--overwrite" in r.output


def _bad_labels(tmp_path, lab, edit):
    rows = lab.read_text().splitlines()
    p = tmp_path / "bad.labels.csv"
    p.write_text("\n".join(edit(rows)) + "\n")
    return p


@pytest.mark.parametrize("edit,message", [
    (lambda rows: rows[:-3], "frames but its labels file has"),
    (lambda rows: [rows[0]] + [r.replace("adenoma", "sessile") for r in rows[1:]], "unknown class 'sessile'"),
    (lambda rows: [rows[0].replace("polyp_id", "pid")] + rows[1:], "lacks column(s) polyp_id"),
])
def test_frames_bad_labels_one_line_nothing_written(video, tmp_path, cli, edit, message):
    vid, lab, _ = video
    bad = _bad_labels(tmp_path, lab, edit)
    out = tmp_path / "o"
    r = cli("frames", vid, "--labels", bad, "--out", out, "--classes", "hyperplastic,adenoma")
    assert r.exit_code != 0 and message in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.labels.csv"]


def test_frames_undecodable_video(video, tmp_path, cli):
    _, lab, _ = video
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    r = cli("frames", junk, "--labels", lab, "--out", tmp_path / "o")
    assert r.exit_code == 7 and "junk.mp4" in r.output and "Traceback" not in r.output   # as `stream` says it
    assert not (tmp_path / "o").exists()
    r = cli("frames", tmp_path / "gone.mp4", "--labels", lab, "--out", tmp_path / "o")
    assert r.exit_code == 7 and "not found" in r.output and not (tmp_path / "o").exists()


def test_frames_reads_user_names_and_picks_the_positive_class(video, tmp_path, cli):
    """Labels as users write them: capitalised classes, "no polyp" with a space, ids a spreadsheet
    wrote as floats. The positive class is the one named adenoma (not the last by name), or --positive."""
    from edgeskd.distill.data import positive_class

    vid, lab, _ = video

    def user(rows):
        out = [rows[0]]
        for r in rows[1:]:
            f = r.split(",")
            f[1] = {"adenoma": "Adenoma", "hyperplastic": "Hyperplastic", "no_polyp": "no polyp"}[f[1]]
            f[-1] = f"{f[-1]}.0" if f[-1] else ""
            out.append(",".join(f))
        return out

    bad = _bad_labels(tmp_path, lab, user)
    out = tmp_path / "o"
    r = cli("frames", vid, "--labels", bad, "--every", "3", "--out", out)
    assert r.exit_code == 0, r.output
    assert "positive class: Adenoma (its name" in r.output
    ls = load_dataset(out / "manifest.csv")
    assert ls.class_names == ["Adenoma", "Hyperplastic", "no_polyp"]
    assert ls.class_names[positive_class(ls)] == "Adenoma"
    assert not any(".0" in g for g in ls.groups) and any(g.startswith("clip/polyp") for g in ls.groups)
    r = cli("info", out / "manifest.csv", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["positive_class"] == "Adenoma", r.output
    r = cli("frames", vid, "--labels", bad, "--every", "3", "--out", out, "--overwrite", "--positive", "Hyperplastic")
    assert r.exit_code == 0 and json.loads((out / "dataset.json").read_text())["positive_class"] == "Hyperplastic"
    r = cli("frames", vid, "--labels", bad, "--out", tmp_path / "o2", "--positive", "SSA")
    assert r.exit_code == 2 and "--positive 'SSA' is not a polyp class" in r.output and not (tmp_path / "o2").exists()


def test_frames_crops_a_video_that_starts_dark(video, tmp_path, cli):
    """A black lead-in (the scope not yet lit) must not turn the crop off for the whole video."""
    import av

    vid, lab, info = video
    lead = 20
    dark = tmp_path / "dark.mp4"
    with av.open(str(vid)) as src, av.open(str(dark), "w") as dst:
        s = dst.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
        for rgb in [np.zeros_like(frames[0])] * lead + frames:
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                dst.mux(p)
        for p in s.encode():
            dst.mux(p)
    rows = lab.read_text().splitlines()
    shifted = [rows[0]] + [f"{i},no_polyp,mucosa_plain,0,0.000," for i in range(lead)]
    head = rows[0].split(",")
    assert head == ["frame", "class", "subclass", "has_polyp", "visible", "polyp_id"]
    shifted += [",".join([str(int(r.split(",")[0]) + lead)] + r.split(",")[1:]) for r in rows[1:]]
    dl = tmp_path / "dark.labels.csv"
    dl.write_text("\n".join(shifted) + "\n")
    out = tmp_path / "fr"
    r = cli("frames", dark, "--labels", dl, "--every", "4", "--out", out)
    assert r.exit_code == 0, r.output
    ls = load_dataset(out / "manifest.csv")
    img = ls.load_image(len(ls) - 1)
    assert abs(img.shape[0] - img.shape[1]) <= 6 and img.shape[1] < 120   # the field, not the 160x96 frame


def test_group_by_reaches_info_and_the_commands_that_reload_training_data(tmp_path, cli):
    """A manifest grouped by a column of its own (patient): `info --group-by` reads it, and a model
    trained with --group-by records it, so export / build-engine / bench split the data the same way."""
    from PIL import Image

    from edgeskd.data.artifact_data import data_ref_from_checkpoint, load_data

    rows = ["path,class,subclass,group,patient"]
    for i in range(24):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(tmp_path / f"{i}.png")
        cls = ("hp", "ad")[i % 2]
        rows.append(f"{i}.png,{cls},{cls}_x,g{i},pt{i % 6}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    r = cli("info", tmp_path / "m.csv")
    assert r.exit_code != 0 and "--group-by" in r.output
    r = cli("info", tmp_path / "m.csv", "--group-by", "patient", "--json")
    assert r.exit_code == 0, r.output
    ref = data_ref_from_checkpoint({"config": {"train": {"data": str(tmp_path / "m.csv"), "format": "manifest",
                                                          "group_by": "patient"}}})
    assert ref["group_by"] == "patient"
    by_ref = load_data(ref)
    again = load_data(ref, path=tmp_path / "m.csv")   # --data naming the training data again
    assert list(by_ref.groups) == list(again.groups) and set(by_ref.groups) == {f"pt{k}" for k in range(6)}
    assert straddling_groups(by_ref.groups, by_ref.splits) == {}


def test_the_positive_class_is_found_by_name_by_every_command():
    """Without a dataset.json: the one class named adenoma / SSA / SSL is positive (the last class by
    name, hyperplastic, silently turned F1 and NPV around); no such class: the last one."""
    from edgeskd.data.records import positive_class_index

    assert positive_class_index(["Adenoma", "Hyperplastic"], None) == 0
    assert positive_class_index(["HP", "SSA", "no_polyp"], 2) == 1
    assert positive_class_index(["adenoma", "hyperplastic", "no_polyp"], 2) == 0
    assert positive_class_index(["a", "b", "c"], None) == 2
    assert positive_class_index(["adenoma", "ssl", "hp"], None) == 2          # two named: the rule's last class
    assert positive_class_index(["Adenoma", "Hyperplastic"], None, "Hyperplastic") == 1   # the data set's choice wins


def test_frames_refuses_one_class_written_two_ways_and_labels_given_as_videos(video, tmp_path, cli):
    vid, lab, _ = video

    def mixed(rows):   # the adenomas with polyp id 1, 5, 9 written "Adenoma" (3 and 7 stay "adenoma")
        return [rows[0]] + [r.replace("adenoma", "Adenoma") if r.split(",")[-1] and int(r.split(",")[-1]) % 4 == 1 else r
                            for r in rows[1:]]

    bad = _bad_labels(tmp_path, lab, mixed)
    r = cli("frames", vid, "--labels", bad, "--out", tmp_path / "o")
    assert r.exit_code != 0 and "one class two ways" in r.output and not (tmp_path / "o").exists()
    r = cli("frames", vid, vid, "--labels", lab, lab, "--out", tmp_path / "o")   # --labels A B: B read as a video
    assert r.exit_code == 2 and "--labels once per video" in r.output and not (tmp_path / "o").exists()


def test_frames_notes_a_polyp_name_in_two_videos_and_a_missing_subclass_column(tmp_path):
    from edgeskd.data.video_frames import _label_notes, read_video_labels

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("frame,class,subclass,polyp_id\n0,adenoma,tub,case1\n1,,,\n2,hyperplastic,inf,7\n")
    b.write_text("frame,class,polyp_id\n0,adenoma,case1\n1,hyperplastic,7\n")
    labs = [read_video_labels(a), read_video_labels(b)]
    notes = _label_notes([tmp_path / "v1.mp4", tmp_path / "v2.mp4"], [a, b], labs)
    assert len(notes) == 2 and "'case1' in v1, v2" in notes[0] and "1 labels file(s) have no subclass column" in notes[1]
    assert "7" not in notes[0].split("e.g.")[1]   # numbered polyps restart in every video: no note for them
    assert _label_notes([tmp_path / "v1.mp4"], [a], labs[:1]) == []
