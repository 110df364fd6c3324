"""The stream with a "no polyp" class and with labelled video: the "no polyp" state, the video
figures (false alarms per minute, per-subtype and per-polyp accuracy), both labels styles, and the
annotated video recorded off the live path."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("av")

from helpers_stream import META, make_video  # noqa: E402

from edgeskd.meta import ModelMeta  # noqa: E402
from edgeskd.runtime.fake import FakeRunner  # noqa: E402

IMAGE_TEST = {"split": "test", "n": 500, "accuracy": 0.8, "f1": 0.8,
              "per_subclass_accuracy": {"hp_a": 0.9, "ad_a": 0.7}}
BG = ModelMeta(class_names=["hyperplastic", "adenoma", "no_polyp"],
               subclass_names=["hp_a", "hp_b", "ad_a", "ad_b", "mucosa_plain", "mucosa_fold"],
               subclass_to_class=[0, 0, 1, 1, 2, 2], input_size=(32, 32), background_class=2,
               presence_threshold=0.5, threshold=0.8, extra={"image_test": IMAGE_TEST})

# frames 0-9 without a polyp (3-5: a confident adenoma on bare wall = one false alarm), 10-19 a
# hyperplastic polyp (id 1, subtype hp_a), 20-29 an adenoma (id 2, subtype ad_a; 28-29 called hp)
N = 30


def _script(i: int) -> np.ndarray:
    x = np.zeros(6, np.float32)
    if i < 10:
        x[2 if i in (3, 4, 5) else 4] = 8.0
    elif i < 20:
        x[0] = 8.0
    else:
        x[0 if i >= 28 else 2] = 8.0
    return x


def scripted_runner(meta: ModelMeta = BG) -> FakeRunner:
    """Batch-1 calls in frame order (file mode) → the scripted logits of that frame."""
    count = {"i": 0}

    def fn(batch: np.ndarray) -> np.ndarray:
        out = np.stack([_script(count["i"] + k) for k in range(len(batch))])
        count["i"] += len(batch)
        return out[:, :meta.num_outputs]

    return FakeRunner(meta, fn)


def _labels(path, *, style: str = "old", polyp_ids: bool = True):
    rows = ["frame,class,subclass,has_polyp,visible" + (",polyp_id" if polyp_ids else "")]
    for i in range(N):
        if i < 10:
            cls, sub, has, pid = ("" if style == "old" else "no_polyp"), "", 0, ""
        elif i < 20:
            cls, sub, has, pid = "hyperplastic", "hp_a", 1, 1
        else:
            cls, sub, has, pid = "adenoma", "ad_a", 1, 2
        rows.append(f"{i},{cls},{sub},{has},1" + (f",{pid}" if polyp_ids else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


def _run(tmp_path, runner, labels, **kw):
    from edgeskd.stream import StreamConfig, run_stream

    video = tmp_path / "in.mp4"
    if not video.exists():
        make_video(video, n=N, w=96, h=64)
    kw.setdefault("hold_s", 0.0)   # each frame's own state (the hold has its test)
    cfg = StreamConfig(video=str(video), labels=labels, jsonl=tmp_path / "p.jsonl", smooth=1.0,
                       measure_ceiling=False, crop="none", **kw)
    return run_stream(cfg, runner=runner)


@pytest.mark.parametrize("style", ["old", "new"])
def test_no_polyp_state_and_video_figures(tmp_path, style):
    res = _run(tmp_path, scripted_runner(), _labels(tmp_path / "gt.csv", style=style))
    recs = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(recs) == N
    for k in ("frame", "probs", "class", "state", "presence", "polyp_probs"):
        assert k in recs[0]
    assert recs[0]["state"] == "no polyp" and recs[0]["class"] is None and "subclass" not in recs[0]
    assert recs[0]["presence"] < 0.01 and len(recs[0]["probs"]) == 3
    assert recs[3]["state"] == "adenoma" and recs[3]["subclass"] == "ad_a"
    assert recs[12]["state"] == "hyperplastic" and recs[12]["subclass"] == "hp_a"
    lab = res.stats["labels"]
    v = lab["video"]
    npf = v["no_polyp_frames"]
    assert npf["n"] == 10 and npf["false_alarms"] == 1 and npf["class_call_share"] == pytest.approx(0.3)
    assert npf["no_polyp_state_share"] == pytest.approx(0.7)
    assert npf["false_alarms_per_minute"] == pytest.approx(1 / (10 / 30 / 60))
    assert ">= 3 consecutive" in npf["episode_rule"]
    pf = v["polyp_frames"]
    assert pf["n"] == 20 and pf["accuracy"] == pytest.approx(18 / 20) and pf["presence_sensitivity"] == 1.0
    lo, hi = pf["accuracy_ci95"]
    assert lo < 0.9 < hi
    assert v["per_subtype"]["hp_a"]["accuracy"] == 1.0 and v["per_subtype"]["ad_a"]["accuracy"] == pytest.approx(0.8)
    assert v["per_subtype"]["hp_a"]["image_test_accuracy"] == 0.9 and v["per_subtype"]["hp_a"]["polyps"] == 1
    assert pf["interval"] == "2 cluster(s), fewer than 20: Wilson over the clusters as cases"
    assert pf["accuracy_ci95"][0] < 0.35   # Wilson of 1.8 right out of 2 polyps: [0.28, 0.99]
    assert v["image_test"]["accuracy"] == 0.8
    assert v["negative_polyps_called"] == {"n_polyps": 1, "with_negative_call": 1, "share": 1.0,
                                           "share_ci95": pytest.approx(v["negative_polyps_called"]["share_ci95"])}
    pp = lab["per_polyp"]
    assert pp["n_labelled"] == 2 and pp["accuracy_argmax"] == 1.0 and pp["accuracy_argmax_ci95"][1] == 1.0
    assert lab["frames_evaluated"] == 20 and lab["frames_without_polyp"] == 10


def test_a_call_shows_once_it_has_held(tmp_path):
    """Default hold (0.1 s): the 3-frame adenoma flicker on bare wall (frames 3-5 at 30 fps) never
    shows, so it is no false alarm; the steady hyperplastic polyp (frames 10-19) shows from 0.1 s on."""
    from edgeskd.stream.smoothing import DEFAULT_HOLD_S

    res = _run(tmp_path, scripted_runner(), _labels(tmp_path / "gt.csv"), hold_s=DEFAULT_HOLD_S)
    recs = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["state"] for r in recs[3:6]] == ["low confidence"] * 3
    assert [r["raw_state"] for r in recs[3:6]] == ["adenoma"] * 3
    assert [r["state"] for r in recs[10:15]] == ["low confidence"] * 3 + ["hyperplastic"] * 2
    assert res.stats["labels"]["video"]["no_polyp_frames"]["false_alarms"] == 0
    assert res.stats["source"]["hold_s"] == DEFAULT_HOLD_S


def test_labels_without_polyp_ids_say_why(tmp_path):
    res = _run(tmp_path, scripted_runner(), _labels(tmp_path / "gt.csv", polyp_ids=False))
    lab = res.stats["labels"]
    assert lab["per_polyp"] is None and "no polyp_id column" in lab["per_polyp_note"]
    assert lab["video"]["polyp_frames"]["n"] == 20 and lab["video"]["no_polyp_frames"]["false_alarms"] == 1
    assert lab["video"]["negative_polyps_called"] is None
    assert "no polyp ids" in lab["video"]["polyp_frames"]["interval"]
    assert lab["video"]["per_subtype"]["hp_a"]["polyps"] is None


def test_frame_rates_get_their_interval_from_the_polyps():
    """Frames of a polyp move together: 10 polyps of 50 frames, each all right or all wrong, is
    10 cases, not 500 — the interval is as wide as 10 cases' (and the same hits spread over 500
    independent frames keep the narrow Wilson interval)."""
    from edgeskd.stream.video_figures import cluster_rate_ci, rate_ci, run_clusters

    hits = np.repeat([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], 50).astype(bool)
    polyps = list(np.repeat(np.arange(10), 50))
    rate, ci, how = cluster_rate_ci(hits, polyps)
    assert rate == pytest.approx(0.7) and "10 cluster(s)" in how
    frames_ci = rate_ci(350, 500)[1]
    assert ci[1] - ci[0] > 3 * (frames_ci[1] - frames_ci[0])
    assert ci[0] < 0.5 and ci[1] > 0.9
    # 25 polyps of 20 frames, every polyp 70 % right: the bootstrap has no spread between polyps,
    # and the interval is the frames' Wilson interval (never narrower)
    mixed = np.tile([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], 50).astype(bool)
    many = list(np.repeat(np.arange(25), 20))
    rate, ci, how = cluster_rate_ci(mixed, many)
    assert ci == pytest.approx(frames_ci) and how == "bootstrap over 25 clusters"
    assert cluster_rate_ci(hits, None)[1] == pytest.approx(frames_ci)
    assert list(run_clusters([5, 6, 7, 20, 21, 3])) == [1, 1, 1, 2, 2, 0]


def test_few_polyps_never_give_a_frame_level_interval():
    """58 right negative calls that come from 2 polyps are 2 cases' worth, not 58: the bootstrap over
    2 polyps has no spread (both all right), so the interval is Wilson over the 2 polyps."""
    from edgeskd.stream.video_figures import cluster_rate_ci, rate_ci

    hits = np.ones(58, bool)
    polyps = [0] * 30 + [1] * 28
    rate, ci, how = cluster_rate_ci(hits, polyps)
    assert rate == 1.0 and ci[1] == 1.0
    assert ci[0] == pytest.approx(rate_ci(2, 2)[1][0]) and ci[0] < 0.35   # [34.2, 100] %
    assert rate_ci(58, 58)[1][0] > 0.9                                     # what the frames alone would claim
    assert "2 cluster(s)" in how and "Wilson over the clusters" in how
    one = cluster_rate_ci(np.ones(40, bool), [7] * 40)                    # one polyp: one case
    assert one[1][0] == pytest.approx(rate_ci(1, 1)[1][0])


def test_a_model_without_background_reads_new_labels_and_counts_its_false_alarms(tmp_path):
    res = _run(tmp_path, scripted_runner(META), _labels(tmp_path / "gt.csv", style="new"))
    v = res.stats["labels"]["video"]
    # no "no polyp" answer: every polyp-free frame gets a class (the failure the presence class removes)
    assert v["no_polyp_frames"]["n"] == 10 and v["no_polyp_frames"]["class_call_share"] == 1.0
    assert v["no_polyp_frames"]["false_alarms"] == 1 and "no_polyp_state_share" not in v["no_polyp_frames"]
    assert "presence_sensitivity" not in v["polyp_frames"]
    assert "image_test_note" in v
    recs = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert "presence" not in recs[0] and recs[0]["class"] in META.class_names


def test_alarm_episode_rule():
    from edgeskd.stream.video_figures import alarm_episodes

    calls = [1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1]
    assert alarm_episodes(range(len(calls)), [bool(c) for c in calls]) == 2
    # a gap in the processed frames (another frame between them) ends a run
    assert alarm_episodes([0, 1, 3, 4, 5], [True] * 5) == 1
    assert alarm_episodes([], []) == 0


def test_displayed_state_leaves_a_polyp_at_once():
    """The moving average lags when a polyp leaves the view; a frame whose own probabilities say
    "no polyp" is shown as "no polyp" although the smoothed ones still hold the polyp's class."""
    from edgeskd.clinical.operating_point import NO_POLYP_CALL
    from edgeskd.stream.result import FrameResult, Presence
    from edgeskd.stream.source import DecodedFrame

    pr = Presence.of(BG)
    frame = DecodedFrame(index=0, time_s=0.0, frame=np.zeros((8, 8, 3), np.uint8), t_decoded=0.0)

    def result(probs, smoothed):
        return FrameResult(frame=frame, ordinal=0, probs=np.array(probs), smoothed=np.array(smoothed),
                           subclass_probs=None, latency_s=0.0, fps=0.0, crop=None, threshold=0.8, presence=pr)

    leaving = result([0.05, 0.05, 0.9], [0.7, 0.03, 0.27])        # frame: bare wall; average: still hp
    assert leaving.raw_state == NO_POLYP_CALL and leaving.state == NO_POLYP_CALL and leaving.smoothed_pred == 0
    entering = result([0.9, 0.05, 0.05], [0.3, 0.05, 0.65])       # frame: hp; average: still bare wall
    assert entering.raw_state == 0 and entering.state == NO_POLYP_CALL
    staying = result([0.9, 0.05, 0.05], [0.85, 0.05, 0.1])        # both see the polyp: the smoothed call
    assert staying.state == 0


def test_overlay_shows_no_polyp_without_class_or_subclass():
    from edgeskd.stream.overlay import Annotation, draw_annotation

    a = Annotation(class_name="adenoma", prob=0.9, raw_class_name="no polyp", raw_prob=0.9, subclass="ad_a",
                   subclass_prob=0.8, positive_prob=0.9, fps=30, latency_ms=2, no_polyp=True, presence=0.03)
    assert a.headline().startswith("no polyp") and "adenoma" not in a.headline()
    img = np.zeros((64, 96, 3), np.uint8)
    assert draw_annotation(img, a).shape == img.shape


def test_recording_is_off_the_live_path_in_file_mode(tmp_path, monkeypatch):
    """A recorder 10x slower than inference: in file mode every frame is still written, and frames do
    not wait behind it (the decoder waits for a recorder token instead)."""
    from edgeskd.stream import overlay

    real = overlay.draw_annotation

    def slow_draw(rgb, ann):
        time.sleep(0.04)
        return real(rgb, ann)

    monkeypatch.setattr(overlay, "draw_annotation", slow_draw)
    make_video(tmp_path / "in.mp4", n=60, w=96, h=64)   # more frames than the recorder's queue holds
    out = tmp_path / "out.mp4"
    runner = FakeRunner(BG, lambda b: np.tile(_script(0), (len(b), 1)))
    res = _run(tmp_path, runner, None, out=out)
    s = res.stats
    rec = s["recording"]
    assert rec["frames_written"] == 60 and rec["frames_skipped"] == 0 and rec["blocking"]
    assert rec["queue_max"] <= rec["queue_size"] < 60
    # without the gate, frames would queue behind a 40 ms-per-frame recorder (hundreds of ms)
    assert s["live_latency_ms"]["p50"] < 30.0, s["live_latency_ms"]
    assert s["live_latency_ms"] == s["latency_ms"]


def test_realtime_recorder_never_blocks_the_live_path(tmp_path):
    from edgeskd.stream.sinks import REALTIME_QUEUE, VideoSink

    sink = VideoSink(tmp_path / "o.mp4", 96, 64, 30, BG, block=False)
    try:
        assert sink.queue_size == REALTIME_QUEUE and not sink.block
    finally:
        sink.close(ok=False)


def test_labels_that_are_not_this_videos_are_flagged():
    from edgeskd.stream.labels import FrameTruth
    from edgeskd.stream.pipeline import labels_range_warnings

    truth = FrameTruth({f: 1 for f in range(1, 300)}, set(), None, None)
    msgs = labels_range_warnings(truth, [0, 119], complete=True)
    assert len(msgs) == 2 and "run to frame 299" in msgs[0] and "180 rows past" in msgs[0] and "count from 0" in msgs[1]
    assert labels_range_warnings(truth, [0, 119], complete=False)[0].startswith("the labels have no row for frame 0")
    fits = FrameTruth({f: 1 for f in range(0, 120)}, set(), None, None)
    assert labels_range_warnings(fits, [0, 119], complete=True) == []
    assert labels_range_warnings(FrameTruth({f: 1 for f in range(0, 125)}, set(), None, None), [0, 119],
                                 complete=True, slack=30) == []


def test_a_variable_rate_video_counts_its_frames_in_decode_order(tmp_path):
    """A file whose frame rate changes (15 fps, then 30): frame numbers follow decode order, as the
    labels file and `edgeskd frames` count them, not timestamp x average rate (which gave 118 of
    120 frames another frame's label)."""
    import fractions

    import av

    from edgeskd.stream.source import VideoSource

    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = fractions.Fraction(1, 90000)
        t = 0
        for i in range(60):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 4) % 256, np.uint8), format="rgb24")
            f.pts, f.time_base = t, fractions.Fraction(1, 90000)
            t += 6000 if i < 30 else 3000
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    src = VideoSource(str(path), realtime=False)
    assert src.info.variable_rate
    idx = [f.index for f in src]
    src.close()
    assert idx == list(range(60))


def test_a_subtype_name_two_classes_share_is_read_as_training_named_it(tmp_path):
    from edgeskd.stream.labels import read_truth

    p = tmp_path / "l.csv"
    p.write_text("frame,class,subclass,polyp_id\n0,Adenoma,flat,a1\n1,Hyperplastic,flat,h1\n2,Adenoma,raised,a2\n3,,,\n")
    t = read_truth(p, ["Adenoma", "Hyperplastic", "no_polyp"], 2,
                   ["Adenoma.flat", "raised", "Hyperplastic.flat", "no_polyp"])
    assert t.subclasses == {0: "Adenoma.flat", 1: "Hyperplastic.flat", 2: "raised"} and t.no_polyp == {3}
    assert t.polyp_names == {0: "a1", 1: "h1", 2: "a2"}


def test_polyp_frames_without_an_id_count_as_one_polyp_per_run(tmp_path):
    """The adenoma's frames (20-29) lack their polyp id: the intervals still come from polyps (the
    hyperplastic one and one run of id-less frames), not from 20 independent frames; a note says so."""
    path = _labels(tmp_path / "gt.csv")
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:21] + [r.rsplit(",", 1)[0] + "," for r in rows[21:]]) + "\n")
    res = _run(tmp_path, scripted_runner(), path)
    v = res.stats["labels"]["video"]
    assert v["polyp_frames"]["interval"] == "2 cluster(s), fewer than 20: Wilson over the clusters as cases"
    assert v["polyp_frames"]["accuracy_ci95"][0] < 0.35
    assert "10 polyp frame(s) have no polyp id" in v["polyp_id_note"]
    assert res.stats["labels"]["per_polyp"]["n_labelled"] == 1   # per-polyp decisions: the named polyp only
