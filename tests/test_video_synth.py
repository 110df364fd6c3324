"""`edgeskd synth-video`: a camera over a polyp-bearing wall, H.264 via PyAV, per-frame labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from helpers_stream import decode_all, make_onnx

pytest.importorskip("av")


def test_synth_video_cli_writes_video_and_labels(tmp_path, cli):
    out = tmp_path / "v.mp4"
    r = cli("synth-video", out, "--seconds", "2", "--fps", "12", "--resolution", "160x96", "--seed", "3",
            "--render-size", "64")
    assert r.exit_code == 0, r.output
    frames = decode_all(out)
    assert len(frames) == 24 and frames[0].shape == (96, 160, 3)
    rows = list(csv.DictReader((tmp_path / "v.labels.csv").open()))
    assert [int(r_["frame"]) for r_ in rows] == list(range(24))
    assert set(rows[0]) == {"frame", "class", "subclass", "has_polyp", "visible", "polyp_id"}
    with_polyp = [r_ for r_ in rows if r_["has_polyp"] == "1"]
    without = [r_ for r_ in rows if r_["has_polyp"] == "0"]
    assert with_polyp and without          # the camera glides from bare wall to a polyp and away
    from edgeskd.data.synthetic import CLASS_NAMES, SUBCLASS_NAMES, SUBCLASS_TO_CLASS

    for r_ in with_polyp:
        assert r_["class"] in CLASS_NAMES and float(r_["visible"]) >= 0.5
        assert CLASS_NAMES[SUBCLASS_TO_CLASS[SUBCLASS_NAMES.index(r_["subclass"])]] == r_["class"]
    # polyp-free frames: the no_polyp class and a kind of bare wall (the data set's rule)
    for r_ in without:
        assert r_["class"] == "no_polyp" and float(r_["visible"]) < 0.5 and r_["polyp_id"] == ""
        assert r_["subclass"] in ("mucosa_plain", "mucosa_lumen", "mucosa_blurred")
    # the field of view is lit, the left border black apart from the overlay text
    f = frames[len(frames) // 2].astype(int)
    assert f[:, 70:150].mean() > 60 and f[20:70, 0:8].mean() < 20


def test_synth_video_is_deterministic_and_labels_follow_the_picture():
    from edgeskd.data.synthvideo import SynthVideo

    a = SynthVideo(128, 96, 10, 2, seed=5, render_size=64)
    b = SynthVideo(128, 96, 10, 2, seed=5, render_size=64)
    assert a.labels_csv() == b.labels_csv()
    np.testing.assert_array_equal(a.frame(7), b.frame(7))
    assert [x.tobytes() for x in a.frames(workers=1)] == [x.tobytes() for x in b.frames(workers=2)]
    c = SynthVideo(128, 96, 10, 2, seed=6, render_size=64)
    assert not np.array_equal(a.frame(7), c.frame(7))
    # a polyp counted as (almost) fully visible lies inside the camera's view
    for i in range(a.n_frames):
        k, vis = a.truth(i)
        p = a.plan.polyps[k]
        cx, cy, half = a.plan.cam[i]
        if vis > 0.9:
            assert abs(p.x - cx) < half and abs(p.y - cy) < half


@pytest.mark.parametrize("seconds,fps", [(8, 30), (3, 25), (20, 30)])
def test_every_frame_has_a_view_and_short_clips_show_both_classes(seconds, fps):
    from edgeskd.data.synthetic import SUBCLASS_TO_CLASS
    from edgeskd.data.synthvideo import plan_video

    plan, _ = plan_video(int(seconds * fps), fps, seed=0)
    assert (plan.cam[:, 2] > 0.3).all()     # the last frame too (it once kept a zero-width view)
    classes = [SUBCLASS_TO_CLASS[p.visual] for p in plan.polyps]
    assert classes == [(classes[0] + i) % 2 for i in range(len(classes))]   # true classes alternate
    visual = [p.visual for p in plan.polyps]
    # each class cycles through all its subclasses before repeating one
    for c in (0, 1):
        own = [v for v in visual if SUBCLASS_TO_CLASS[v] == c]
        assert len(set(own[:3])) == min(3, len(own))


def test_one_polyp_at_a_time_and_none_pops_into_view():
    """Each visit has its own polyp; it appears and goes only while it is out of the field of view,
    and it is rendered as the data set's training images are (its look does not depend on the
    video: the same polyp parameters as ``sample_polyp_params`` gives)."""
    from edgeskd.data.synthvideo import SynthVideo

    sv = SynthVideo(160, 120, 10, 14, seed=3, render_size=64)
    act = sv.plan.active
    assert len(sv.plan.polyps) >= 5 and set(act.tolist()) == set(range(len(sv.plan.polyps)))
    assert (np.diff(act) >= 0).all()                      # visits in order, one polyp at a time
    for i in np.flatnonzero(np.diff(act)):                 # the frames where one polyp gives way to the next
        for j in (i, i + 1):
            assert sv.truth(j)[1] == 0.0, (j, sv.truth(j))
    seen = [max(sv.truth(i)[1] for i in np.flatnonzero(act == k)) for k in range(len(sv.plan.polyps))]
    assert min(seen) > 0.95                                # and every polyp is seen whole at its visit


@pytest.mark.parametrize("args,msg", [
    (["--resolution", "12x34x5"], "WIDTHxHEIGHT"),
    (["--resolution", "10x10"], "between 64"),
    (["--fps", "0"], "--fps"),
    (["--seconds", "-1"], "--seconds"),
])
def test_synth_video_bad_options(tmp_path, cli, args, msg):
    r = cli("synth-video", tmp_path / "v.mp4", *args)
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())


def test_synth_video_odd_size_and_unwritable(tmp_path, cli):
    r = cli("synth-video", tmp_path / "odd.mkv", "--seconds", "0.5", "--fps", "8", "--resolution", "129x97",
            "--render-size", "64")
    assert r.exit_code == 0, r.output
    assert decode_all(tmp_path / "odd.mkv")[0].shape == (97, 129, 3)
    blocker = tmp_path / "f"
    blocker.write_text("x")
    r = cli("synth-video", blocker / "v.mp4", "--seconds", "0.5")
    assert r.exit_code == 2 and "cannot create output directory" in r.output


def test_synth_video_streamed_with_its_labels(tmp_path, cli):
    """The short synthetic video through `edgeskd stream` with its own ground truth."""
    out = tmp_path / "v.mp4"
    assert cli("synth-video", out, "--seconds", "2", "--fps", "10", "--resolution", "192x128", "--render-size", "64").exit_code == 0
    from edgeskd.data.synthetic import POLYP_CLASS_NAMES
    from helpers_stream import META

    # the tiny test model, labelled with the synthetic set's polyp class names (2 subclasses per class)
    onnx_path = make_onnx(tmp_path / "m.onnx", meta=META.replace(class_names=list(POLYP_CLASS_NAMES)))
    st = tmp_path / "s.json"
    r = cli("stream", "--video", out, "--engine", onnx_path, "--labels", tmp_path / "v.labels.csv",
            "--stats", st, "--crop", "auto", "--out", tmp_path / "ann.mp4")
    assert r.exit_code == 0, r.output
    s = json.loads(st.read_text())
    rows = list(csv.DictReader((tmp_path / "v.labels.csv").open()))
    assert s["labels"]["frames_evaluated"] == sum(r_["has_polyp"] == "1" for r_ in rows) > 0
    x, y, w, h = s["source"]["crop"]
    # the field is the 128x128 square right of centre: the crop must find it, not the text
    assert abs(w - 128) <= 6 and abs(h - 128) <= 6 and x >= 30
    assert len(decode_all(tmp_path / "ann.mp4")) == 20
    # per subtype: frames of how many polyps, and the interval by polyp
    (name, sub), *_ = s["labels"]["video"]["per_subtype"].items()
    lo, hi = sub["accuracy_ci95"]
    assert f"  {name}: {sub['n']} frames of {sub['polyps']} polyp(s), accuracy " in r.output
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in r.output
    assert "(intervals: " in r.output


def _flat_look(n: int):
    """A look that adds nothing but the wet film's glints: one even slope (so the flat wall is not
    one specular highlight), no light offset, blur, vignette or noise."""
    from edgeskd.data.synthetic import EndoLook

    one = np.ones(n, np.float32)
    return EndoLook(fov_radius=2 * one, fov_cx=0 * one, fov_cy=0 * one, blur=0 * one, gain=one,
                    white=np.ones((n, 3), np.float32), vignette=0 * one, tilt=np.tile(np.float32([[0.7, 0.0]]), (n, 1)),
                    light=np.zeros((n, 2), np.float32), noise=0 * one)


def test_wet_film_on_the_wall_moves_with_the_view():
    """With ``surface`` the glints are the wall's: a view moved by k pixels shows them moved by k
    pixels (as the textures move); without it they stay where they are on the screen."""
    from edgeskd.data.synthetic import apply_endoscope_look

    S, k = 96, 12
    rgb = np.full((2, S, S, 3), 0.3, np.float32)
    hgt = np.zeros((2, S, S), np.float32)
    off = np.array([[0.2, -0.1], [0.2 + 2 * k / S, -0.1]], np.float32)   # second view k px to the right
    seeds = np.array([1, 2])
    wall = apply_endoscope_look(rgb, hgt, seeds, look=_flat_look(2), text=False, surface=(5, off, np.ones(2)))
    glints = wall[..., 1].astype(int)
    assert glints[0].std() > 5                                           # the film shows
    assert np.abs(glints[0][:, k:] - glints[1][:, :-k]).max() <= 1       # ... and moved with the view
    screen = apply_endoscope_look(rgb, hgt, np.array([1, 1]), look=_flat_look(2), text=False)
    assert np.array_equal(screen[0], screen[1])                          # default: drawn per sample, on screen


def test_video_sensor_noise_is_new_each_frame():
    from edgeskd.data.synthvideo import SynthVideo

    v = SynthVideo(128, 96, 15, 2, seed=3)
    assert len({int(v.frame_seed(i)[0]) for i in range(20)}) == 20
