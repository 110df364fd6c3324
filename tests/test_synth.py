"""Synthetic generator: determinism, label model, endoscope look, writers, `edgeskd synth`, and the
torch Dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeskd.data import load_dataset
from edgeskd.data import synthetic as sy
from edgeskd.data.stats import label_bits
from edgeskd.data.writers import image_names, write_dataset
from edgeskd.errors import UsageError


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESKD_CACHE_DIR", str(tmp_path / "cache"))


def test_same_seed_same_bytes_other_seed_other_images():
    a = sy.make_synthetic(24, 48, seed=3)
    b = sy.make_synthetic(24, 48, seed=3)
    c = sy.make_synthetic(24, 48, seed=4)
    assert a.images.tobytes() == b.images.tobytes()
    assert list(a.labels) == list(b.labels) and list(a.splits) == list(b.splits)
    assert not np.array_equal(a.images, c.images)
    # Labels do not depend on the render size (a model at 64 px sees the same labelled lesions).
    d = sy.make_synthetic(24, 32, seed=3)
    assert list(d.labels) == list(a.labels) and list(d.subclasses) == list(a.subclasses)


def test_a_frame_does_not_depend_on_its_batch():
    sub = np.array([0, 1, 2, 3, 4, 5, 5, 0])
    amb = np.linspace(0.0, 0.5, 8).astype(np.float32)
    full = sy.render_frames(sub, amb, 64, seed=7)
    part = sy.render_frames(sub[3:6], amb[3:6], 64, seed=7, start=3)
    diff = np.abs(full[3:6].astype(int) - part.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # BLAS blocking may move a value by one level


def test_label_model_votes_majority_and_noise():
    lab = sy.sample_labels(4000, seed=0)
    votes, labels, subs, true = lab["votes"], lab["labels"], lab["subclasses"], lab["true_labels"]
    assert votes.min() >= 0 and votes.max() <= 7
    assert np.array_equal(labels, (votes >= 4).astype(int))                 # majority vote
    assert np.array_equal(np.asarray(sy.SUBCLASS_TO_CLASS)[subs], labels)    # subclass inside its class
    noise = np.mean(labels != true)
    assert 0.04 < noise < 0.15                                               # MHIST-like share
    # A flipped majority takes the look-alike partner; an unflipped lesion keeps its own subtype.
    vis, flipped = lab["visual"], labels != true
    assert np.array_equal(subs[flipped], np.asarray(sy.COUNTERPART)[vis[flipped]])
    assert np.array_equal(subs[~flipped], vis[~flipped])


def test_agreement_grades_every_subtype():
    """Votes follow the latent ambiguity inside every subtype (not only in one hard pair), and the
    same ambiguity moves the look towards the pair partner."""
    lab = sy.sample_labels(8000, seed=1)
    vis, amb, true = lab["visual"], lab["ambiguity"], lab["true_labels"]
    dissent = np.where(true == 1, 7 - lab["votes"], lab["votes"])            # annotators calling the other class
    for s in range(sy.N_POLYP_SUBCLASSES):
        sel = vis == s
        assert len(np.unique(dissent[sel])) >= 5                             # agreement varies within the subtype
        assert np.corrcoef(amb[sel], dissent[sel])[0, 1] > 0.6               # ... and follows the ambiguity
        assert 0.02 < np.mean(lab["labels"][sel] != true[sel]) < 0.2          # every subtype has borderline lesions
    rng = np.random.default_rng(0)
    sub = np.arange(sy.N_POLYP_SUBCLASSES)
    typical = sy.sample_polyp_params(rng, sub, np.zeros(len(sub), np.float32))
    border = sy.sample_polyp_params(np.random.default_rng(0), sub, np.full(len(sub), 0.5, np.float32))
    partner = np.asarray(sy.COUNTERPART)
    for k in ("vessels", "mucus", "tubes", "gyri"):   # cues that are not jittered per sample
        gap0 = np.abs(typical[k] - typical[k][partner])
        gap1 = np.abs(border[k] - typical[k][partner])
        assert np.all(gap1 <= gap0 + 1e-6)


def test_look_circular_fov_black_border_text_and_highlights():
    ls = sy.make_synthetic(12, 128, seed=1)
    im = ls.images.astype(np.float32)
    corner = np.median(im[:, :10, :10])          # black border (text pixels aside)
    centre = im[:, 54:74, 54:74].mean()
    assert corner < 10 and centre > 80
    # Overlay text (value 215) sits in the black corners of the clips that carry it (about half),
    # independent of the label; the other frames' corners stay black.
    from edgeskd.data import clips

    d = clips.render_clip_set(12, 128, 1)
    overlay = d["overlay"]
    text = np.array([(img[:8, :40] == 215).any() for img in ls.images])
    assert np.array_equal(ls.images, d["images"]) and 0 < overlay.sum() < len(overlay)
    assert list(text) == list(overlay)
    # Specular highlights: near-white pixels inside the field of view in most frames.
    assert np.mean([(img[16:112, 16:112].min(-1) > 230).any() for img in ls.images]) > 0.6


def test_subclasses_look_different():
    k = sy.N_POLYP_SUBCLASSES
    sub = np.repeat(np.arange(k), 16)
    frames = sy.render_frames(sub, np.zeros(len(sub), np.float32), 64, seed=0).astype(np.float32)
    red_ratio = [(frames[sub == s, 16:48, 16:48, 0] / (frames[sub == s, 16:48, 16:48, 1] + 1)).mean()
                 for s in range(k)]
    # The pink and red adenoma subtypes are redder (less green) than the pale hyperplastic ones.
    assert red_ratio[5] > red_ratio[0] and red_ratio[7] > red_ratio[0]
    # Look-alike pairs: by colour, size, height and mucus a subtype's prototype is closer to its
    # partner (other class) than to the other subtypes of the partner's class, whose looks differ.
    look = np.array([[*st.color, st.size, st.height / 2, st.mucus] for st in sy.SUBCLASS_STYLES])
    owner = np.asarray(sy.SUBCLASS_TO_CLASS)
    for s in range(k):
        p = sy.COUNTERPART[s]
        assert owner[p] != owner[s]
        others = [o for o in range(k) if owner[o] == owner[p] and o != p]
        assert np.linalg.norm(look[s] - look[p]) < min(np.linalg.norm(look[s] - look[o]) for o in others)


def test_make_synthetic_rejects_bad_sizes():
    with pytest.raises(UsageError):
        sy.make_synthetic(0, 64)
    with pytest.raises(UsageError):
        sy.make_synthetic(10, 8)


def test_load_dataset_default_is_synthetic_and_cached(tmp_path):
    ls = load_dataset(None, synthetic_n=300, img_size=128)  # 300·128² ≥ cache threshold
    files = list((tmp_path / "cache").glob("synthetic-*.npz"))
    assert ls.format == "synthetic" and len(files) == 1
    again = load_dataset(None, synthetic_n=300, img_size=128)
    assert again.images.tobytes() == ls.images.tobytes() and list(again.splits) == list(ls.splits)
    assert np.array_equal(again.info["true_labels"], ls.info["true_labels"])
    files[0].write_bytes(b"garbage")  # a damaged cache is regenerated, not trusted
    third = load_dataset(None, synthetic_n=300, img_size=128)
    assert third.images.tobytes() == ls.images.tobytes()


@pytest.mark.parametrize("fmt", ["folder", "manifest", "mhist"])
def test_write_then_load_gives_same_labels(tmp_path, fmt):
    full = sy.make_synthetic(60, 32, seed=2)
    write_dataset(full, tmp_path / "out", fmt)
    back = load_dataset(tmp_path / "out")
    assert back.format == fmt
    # MHIST is HP vs SSA: its writer keeps the polyp frames only (classes and subclasses without no_polyp).
    ls = full.subset(full.polyp_mask) if fmt == "mhist" else full
    if fmt == "mhist":
        assert back.class_names == ["HP", "SSA"] and len(back) == int(full.polyp_mask.sum()) < len(full)
        assert back.background_class is None and back.groups is None
    else:
        assert back.background_class == full.background_class == 2 and back.class_names == list(sy.CLASS_NAMES)
    order = {n: i for i, n in enumerate(image_names(ls))}
    idx = np.array([order[p.name] for p in back.paths])
    assert np.array_equal(back.labels, ls.labels[idx])
    # MHIST's subclasses are its vote bins; the folder and manifest formats keep the visual subtypes.
    want = sy.vote_bin_of(ls.votes) if fmt == "mhist" else ls.subclasses
    assert np.array_equal(back.subclasses, want[idx])
    assert np.array_equal(back.votes, ls.votes[idx])
    assert np.array_equal(back.load_image(5), ls.images[idx[5]])  # PNG: lossless
    if fmt != "mhist":   # groups survive (manifest: the group column; folder: the sidecar)
        assert np.array_equal(back.groups, ls.groups[idx])
    k = back.num_subclasses
    groups = (("test",), ("train", "val")) if fmt == "mhist" else (("train",), ("val",), ("test",))
    for g in groups:  # MHIST has no val (it is carved again on load): train + val keep their counts
        assert np.array_equal(np.bincount(back.subclasses[np.isin(back.splits, g)], minlength=k),
                              np.bincount(want[np.isin(ls.splits, g)], minlength=k))
    if fmt != "mhist":
        assert label_bits(back) == pytest.approx(label_bits(ls))
    side = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert side["label_noise_rate"] == pytest.approx(ls.info["label_noise_rate"])


def test_write_is_atomic_and_refuses_non_empty(tmp_path, monkeypatch):
    from edgeskd.data import writers

    ls = sy.make_synthetic(10, 32, seed=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty.*--overwrite"):
        write_dataset(ls, out, "folder")
    calls = {"n": 0}
    real = writers._png_bytes

    def flaky(img):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real(img)

    monkeypatch.setattr(writers, "_png_bytes", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(ls, out, "folder", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]          # no temp dirs left
    assert [p.name for p in out.iterdir()] == ["keep.txt"]                 # old content untouched
    monkeypatch.setattr(writers, "_png_bytes", real)
    write_dataset(ls, out, "folder", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset.json").is_file()


def test_synth_cli_writes_and_refuses(cli, tmp_path):
    out = tmp_path / "s"
    r = cli("synth", out, "--n", "40", "--img-size", "32", "--format", "manifest")
    assert r.exit_code == 0, r.output
    assert "label noise" in r.output and (out / "manifest.csv").is_file()
    assert len(list((out / "images").glob("*.png"))) == 40
    r = cli("synth", out, "--n", "40", "--img-size", "32")
    assert r.exit_code == 2 and "not empty" in r.output and "Traceback" not in r.output
    r = cli("synth", out, "--n", "40", "--img-size", "32", "--format", "folder", "--overwrite")
    assert r.exit_code == 0 and (out / "train").is_dir() and not (out / "manifest.csv").exists()
    for n in ("0", "3"):   # 3 frames: a set `info` and `train` would then refuse (one class, empty splits)
        r = cli("synth", tmp_path / "t", "--n", n)
        assert r.exit_code == 2 and "--n" in r.output and not (tmp_path / "t").exists()


def test_torch_dataset_matches_preprocess_and_augments_reproducibly():
    torch = pytest.importorskip("torch")
    from edgeskd.data.torch_dataset import ImageDataset
    from edgeskd.runtime.preprocess import preprocess

    ls = sy.make_synthetic(8, 32, seed=0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ev = ImageDataset(ls, 24, mean, std, train=False, target="class")
    x, c, s = ev[3]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == (3, 24, 24)
    assert np.array_equal(x.numpy(), preprocess(ls.images[3], (24, 24), mean, std)[0])
    assert (c, s) == (int(ls.labels[3]), int(ls.subclasses[3]))
    assert np.array_equal(ev.targets, ls.labels)
    tr = ImageDataset(ls, (24, 24), mean, std, train=True, seed=1)
    assert np.array_equal(tr.targets, ls.subclasses)
    a, b = tr[3][0], tr[3][0]
    assert torch.equal(a, b)                       # same (seed, epoch, index) → same augmentation
    outs = []
    for e in range(6):
        tr.set_epoch(e)
        outs.append(tr[3][0])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])   # epochs differ
    assert all(abs(float(o.mean()) - float(x.mean())) < 0.5 for o in outs)  # light jitter only
    with pytest.raises(UsageError):
        ImageDataset(ls, 24, mean, std, train=False, target="votes")
    loader = torch.utils.data.DataLoader(tr, batch_size=4)
    xb, cb, sb = next(iter(loader))
    assert xb.shape == (4, 3, 24, 24) and cb.dtype == torch.int64 and sb.dtype == torch.int64


def test_augment_view_names_the_flip_and_rotation():
    """augment_view's view index is the image's element of the dihedral group: without jitter, every
    draw with the same view gives the same image, 8 views give 8 distinct images, view 0 is the
    input; non-square images only flip (4 views)."""
    from edgeskd.data.torch_dataset import augment_view

    img = np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)
    by_view: dict[int, np.ndarray] = {}
    for seed in range(200):
        out, view = augment_view(img, np.random.default_rng(seed), jitter=0.0)
        assert np.array_equal(by_view.setdefault(view, out), out)
    assert sorted(by_view) == list(range(8)) and np.array_equal(by_view[0], img)
    assert len({v.tobytes() for v in by_view.values()}) == 8
    wide = img[:4]
    views = {augment_view(wide, np.random.default_rng(s), jitter=0.0)[1] for s in range(100)}
    assert len(views) == 4
    flip_only = {augment_view(img, np.random.default_rng(s), jitter=0.0, rotate=False)[1] for s in range(100)}
    assert len(flip_only) == 4 and 0 in flip_only


def test_augment_jitter_is_saturation_then_contrast_then_brightness():
    """The colour jitter (one affine map) equals the three steps done in turn: saturation about each
    pixel's grey, contrast about the image mean, brightness; rounding may differ by one level."""
    from edgeskd.data.torch_dataset import _dihedral, augment_view

    img = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    for seed in range(50):
        out, _ = augment_view(img, np.random.default_rng(seed), jitter=0.3)
        rng = np.random.default_rng(seed)          # the same draws, in the same order
        h, v, k = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(4))
        b, c, s = 1.0 + rng.uniform(-0.3, 0.3, 3)
        x = _dihedral(img, h, v, k).astype(np.float64)
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * s
        x = (x - x.mean()) * c + x.mean()
        ref = np.clip(x * b + 0.5, 0, 255).astype(np.uint8)
        assert np.abs(out.astype(int) - ref).max() <= 1
        assert (out != ref).mean() < 0.05
