"""edgeskd stream: CPU frame preprocessing vs the reference, crop detector, smoothing, stats,
labels metrics, and short synthetic videos streamed end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeskd.runtime.preprocess import preprocess_for
from helpers_stream import META, decode_all, endo_frame, make_onnx, make_video

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


def _frames(path: Path, n: int = 3):
    c = av.open(str(path))
    out = []
    for f in c.decode(video=0):
        out.append(f)
        if len(out) == n:
            break
    return c, out


# -- CPU preprocessing of decoded frames --------------------------------------------------------
@pytest.mark.parametrize("codec,pix_fmt,size", [
    ("libx264", "yuv420p", (160, 120)),
    ("libx264", "yuv444p", (161, 119)),     # odd sizes, 4:4:4
    ("mjpeg", "yuvj420p", (96, 144)),       # full-range JPEG, portrait
    ("mjpeg", "yuvj422p", (160, 120)),
    ("libx264", "yuv420p10le", (160, 120)),  # no fast path: to_ndarray("rgb24") + the same resize
])
@pytest.mark.parametrize("crop", [None, (13, 7, 71, 90)])
def test_frame_preprocessing_matches_reference(tmp_path, codec, pix_fmt, size, crop):
    from edgeskd.stream.frames import FAST_FORMATS, FramePreprocessor

    suffix = ".avi" if codec == "mjpeg" else ".mp4"
    path = make_video(tmp_path / f"v{suffix}", n=3, w=size[0], h=size[1], codec=codec, pix_fmt=pix_fmt)
    meta = META.replace(channel_order="BGR")      # exercise the channel swap too
    fp = FramePreprocessor(meta)
    c, frames = _frames(path)
    assert frames[0].format.name.startswith(pix_fmt[:6])
    for f in frames:
        rgb = f.to_ndarray(format="rgb24")        # swscale's RGB: what a generic pipeline would use
        ref = preprocess_for(meta, rgb, crop=crop)[0]
        # given the same RGB values, the sampled path is bit-identical to the reference
        np.testing.assert_array_equal(fp.one(f, crop, rgb=rgb), ref)
        fast = fp.one(f, crop)
        # our own YUV->RGB at the sampled pixels vs swscale's: within 3 of 255 levels, ~0.5 on average
        diff = np.abs(fast - ref) * (np.asarray(meta.std)[::-1] * 255).reshape(3, 1, 1)
        tol = 3.01 if f.format.name in FAST_FORMATS else 1e-3
        assert diff.max() <= tol, diff.max()
        assert diff.mean() <= 1.0
    c.close()


def test_thumbnail_has_frame_aspect(tmp_path):
    from edgeskd.stream.frames import thumbnail_rgb

    path = make_video(tmp_path / "v.mp4", n=1, w=320, h=180)
    c, (f,) = _frames(path, 1)
    thumb, sx, sy = thumbnail_rgb(f, max_side=64)
    assert thumb.shape == (36, 64, 3) and thumb.dtype == np.uint8
    assert sx == pytest.approx(5.0) and sy == pytest.approx(5.0)
    c.close()


# -- content-area detector -------------------------------------------------------------------------
@pytest.mark.parametrize("w,h,field", [
    (320, 180, (180, 90, 80)),      # circle right of centre, text on the left border
    (256, 256, (128, 128, 120)),    # centred, almost touching the edges
    (180, 320, (90, 170, 70)),      # portrait
])
def test_crop_detector_finds_lit_field(w, h, field):
    from edgeskd.stream.crop import detect_content_area

    img = endo_frame(w, h, 3, field=field)
    cx, cy, r = field
    box = detect_content_area(img)
    assert box is not None
    x, y, bw, bh = box
    truth = (cx - r, cy - r, 2 * r, 2 * r)
    assert abs(x - truth[0]) <= 3 and abs(y - truth[1]) <= 3, (box, truth)
    assert abs(bw - truth[2]) <= 5 and abs(bh - truth[3]) <= 5, (box, truth)


def test_crop_detector_ignores_text_block_and_handles_dark_frames():
    from edgeskd.stream.crop import detect_content_area

    img = endo_frame(320, 180, 0, field=(200, 90, 80), text=False)
    img[20:60, 5:90] = 0
    img[25:28, 8:80] = 255          # a thick bright text line far from the field
    img[40:44, 8:60] = 230
    x, y, bw, bh = detect_content_area(img)
    assert x >= 115 and abs(x - 120) <= 3 and abs(bw - 160) <= 5
    assert detect_content_area(np.zeros((90, 160, 3), np.uint8)) is None


def test_crop_tracker_smooths_and_follows_a_real_change():
    from edgeskd.stream.crop import CropTracker

    t = CropTracker(640, 480, every=10, window=5)
    assert t.due()
    for est in [(100, 50, 400, 380), (102, 48, 398, 384), (300, 200, 10, 10), (98, 52, 402, 378)]:
        t.update(est)
    # the outlier was not adopted, and the median is stable
    assert t.box == pytest.approx((100, 50, 400, 380), abs=2)
    t.update((0, 0, 640, 480))      # scope change: needs a second consistent estimate
    assert t.box[0] == pytest.approx(100, abs=2)
    t.update((0, 0, 640, 480))
    assert t.box == (0, 0, 640, 480)
    t.update(None)                   # nothing found: keep the last box
    assert t.box == (0, 0, 640, 480)
    for _ in range(10):
        t.step()
    assert t.due()


def test_crop_tracker_observes_frames_and_restarts_at_a_new_size(tmp_path):
    from edgeskd.errors import UsageError
    from edgeskd.stream.crop import CropTracker, FrameCrop
    from edgeskd.stream.source import DecodedFrame

    c, frames = _frames(make_video(tmp_path / "a.mp4", n=7, w=320, h=180), 7)
    t = CropTracker(320, 180, every=3)
    for f in frames:
        t.observe(f)
    assert t.estimates == 3                       # frames 0, 3 and 6
    cx, cy, r = 320 // 2 + 320 // 16, 90, int(180 * 0.45)
    assert abs(t.box[0] - (cx - r)) <= 6 and abs(t.box[2] - 2 * r) <= 10
    c2, (g,) = _frames(make_video(tmp_path / "b.mp4", n=1, w=256, h=256), 1)
    t.observe(g)                                  # another frame size: start over at that size
    assert (t.width, t.height, t.estimates) == (256, 256, 1)
    assert t.box[0] + t.box[2] <= 256 and abs(t.box[2] - 2 * int(256 * 0.45)) <= 10
    fixed = FrameCrop((10, 10, 300, 150), 320, 180)
    assert fixed.mode == "fixed" and fixed.observe([DecodedFrame(0, 0.0, 0.0, frames[0])]) == (10, 10, 300, 150)
    with pytest.raises(UsageError, match="does not fit"):
        fixed.observe([DecodedFrame(1, 0.0, 0.0, g)])     # the frame size changed under a fixed crop
    assert FrameCrop(None, 320, 180).observe([DecodedFrame(0, 0.0, 0.0, frames[0])]) is None
    c.close()
    c2.close()


def test_binary_open_removes_thin_strokes():
    from edgeskd.stream.crop import binary_open

    m = np.zeros((40, 40), bool)
    m[5:7, 2:38] = True              # 2-px stroke
    m[15:35, 10:30] = True           # solid block
    o = binary_open(m, 3)
    assert not o[5:7].any()
    assert o[15:35, 10:30].all() and o.sum() == 400


# -- smoothing ----------------------------------------------------------------------------------------------
def test_ema_smoothing_by_hand():
    from edgeskd.errors import UsageError
    from edgeskd.stream.smoothing import EmaSmoother

    s = EmaSmoother(0.25)
    p1, p2, p3 = np.array([0.9, 0.1]), np.array([0.1, 0.9]), np.array([0.1, 0.9])
    np.testing.assert_allclose(s.update(p1), [0.9, 0.1])
    np.testing.assert_allclose(s.update(p2), [0.25 * 0.1 + 0.75 * 0.9, 0.25 * 0.9 + 0.75 * 0.1], rtol=1e-6)
    out = s.update(p3)
    expect = 0.25 * 0.1 + 0.75 * (0.25 * 0.1 + 0.75 * 0.9)
    assert out[0] == pytest.approx(expect, rel=1e-6) and out.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(EmaSmoother(1.0).update_batch(np.stack([p1, p2])), np.stack([p1, p2]))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UsageError):
            EmaSmoother(bad)


def test_ema_smoothing_spans_the_same_time_at_any_frame_rate():
    from edgeskd.stream.smoothing import EmaSmoother

    p1, p2 = np.array([0.9, 0.1]), np.array([0.1, 0.9])
    # one step of 1/15 s = two steps of 1/30 s with the same new probabilities
    s15, s30 = EmaSmoother(0.3), EmaSmoother(0.3)
    s15.update(p1, 0.0)
    s30.update(p1, 0.0)
    a = s15.update(p2, 1 / 15)
    s30.update(p2, 1 / 30)
    np.testing.assert_allclose(a, s30.update(p2, 2 / 30), rtol=1e-5)
    assert s15.weight(1 / 15 + 1 / 15) == pytest.approx(1 - 0.7 ** 2)
    # at 30 fps, and without times, the weight is alpha itself; off stays off
    assert EmaSmoother(0.3).weight(None) == 0.3 and s30.weight(3 / 30) == pytest.approx(0.3)
    off = EmaSmoother(1.0)
    off.update(p1, 0.0)
    np.testing.assert_allclose(off.update(p2, 0.5), p2)


# -- stats, metrics, labels --------------------------------------------------------------------------------
def test_stats_schema_and_percentiles():
    from edgeskd.stream.stats import STATS_KEYS, percentiles_ms, stats_dict

    lat = np.arange(1, 101) / 1000.0   # 1..100 ms
    p = percentiles_ms(lat)
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    d = stats_dict(frames_decoded=10, frames_processed=8, frames_dropped=2, fps=12.5, latencies_s=lat,
                   decode_fps_ceiling=None, source={"uri": "x"})
    assert tuple(d) == STATS_KEYS
    assert set(d["latency_ms"]) == {"p50", "p95", "p99"}
    assert percentiles_ms([]) == {"p50": None, "p95": None, "p99": None}


def test_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    from edgeskd.metrics import label_metrics

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    m = label_metrics(y, p, 2, 1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-6)
    assert m["f1"] == pytest.approx(f1_score(y, p, pos_label=1), abs=1e-6)
    assert m["f1_macro"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-6)


def test_labels_csv(tmp_path):
    from edgeskd.errors import DataError
    from edgeskd.stream.labels import read_frame_labels

    p = tmp_path / "gt.csv"
    p.write_text("frame,class,subclass,has_polyp\n0,hyperplastic,hp_a,1\n1,,,0\n2,Adenoma,ad_b,1\n3,1,,1\n")
    assert read_frame_labels(p, META.class_names) == {0: 0, 2: 1, 3: 1}
    p.write_text("frame,class\n0,carcinoma\n")
    with pytest.raises(DataError, match="carcinoma"):
        read_frame_labels(p, META.class_names)
    p.write_text("index,label\n0,1\n")
    with pytest.raises(DataError, match="frame,class"):
        read_frame_labels(p, META.class_names)


def test_overlay_draws_on_a_copy():
    from edgeskd.stream.overlay import Annotation, draw_annotation

    rgb = np.zeros((120, 160, 3), np.uint8)
    out = draw_annotation(rgb, Annotation("adenoma", 0.8, "adenoma", 0.9, "ad_a", 0.6, 0.8, 30.0, 4.2,
                                          crop=(10, 10, 100, 100), is_positive=True))
    assert out.shape == rgb.shape and not rgb.any() and out.any()
    assert out[:20, :60].any()       # text panel in the top-left corner


# -- end to end through the CLI --------------------------------------------------------------------------
def test_stream_cli_end_to_end(tmp_path, cli, onnx_path):
    video = make_video(tmp_path / "in.mp4", n=24, w=160, h=120)
    gt = tmp_path / "gt.csv"
    gt.write_text("frame,class\n" + "".join(f"{i},{'adenoma' if (i // 5) % 2 else 'hyperplastic'}\n" for i in range(24)))
    out, jl, st = tmp_path / "out.mp4", tmp_path / "p.jsonl", tmp_path / "s.json"
    r = cli("stream", video, "--engine", onnx_path, "--out", out, "--jsonl", jl, "--stats", st,
            "--labels", gt, "--crop", "auto", "--crop-every", "5", "--batch-size", "4", "--smooth", "0.5")
    assert r.exit_code == 0, r.output
    assert "processed 24 of 24" in r.output
    assert "[cpu preprocessing, onnxruntime]" in r.output
    stats = json.loads(st.read_text())
    assert list(stats)[:7] == ["frames_decoded", "frames_processed", "frames_dropped", "fps", "latency_ms",
                               "decode_fps_ceiling", "source"]
    assert stats["frames_decoded"] == stats["frames_processed"] == 24 and stats["frames_dropped"] == 0
    assert stats["fps"] > 0 and stats["decode_fps_ceiling"] > 0
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p95"] <= stats["latency_ms"]["p99"]
    assert stats["source"]["width"] == 160 and stats["source"]["codec"] == "h264"
    cx, cy, r_ = 160 // 2 + 160 // 16, 60, int(120 * 0.45)
    x, y, w, h = stats["source"]["crop"]
    assert abs(x - (cx - r_)) <= 6 and abs(w - 2 * r_) <= 10
    lb = stats["labels"]
    assert lb["frames_evaluated"] == 24 and 0.0 <= lb["raw"]["accuracy"] <= 1.0
    assert set(lb["smoothed"]) == {"accuracy", "f1", "f1_macro"}
    recs = [json.loads(line) for line in jl.read_text().splitlines()]
    assert [r_["frame"] for r_ in recs] == list(range(24))
    assert {"frame", "time", "probs", "smoothed", "class", "smoothed_class", "latency_ms", "subclass"} <= set(recs[0])
    for a in recs:
        assert sum(a["probs"]) == pytest.approx(1.0, abs=1e-4) and sum(a["smoothed"]) == pytest.approx(1.0, abs=1e-4)
    # smoothing: smoothed_t = 0.5 p_t + 0.5 smoothed_{t-1}
    s_prev = np.array(recs[0]["smoothed"])
    for a in recs[1:5]:
        s_prev = 0.5 * np.array(a["probs"]) + 0.5 * s_prev
        np.testing.assert_allclose(a["smoothed"], s_prev, atol=2e-5)
    # the raw prediction reacts to the alternating blob (the test model is colour-sensitive)
    assert len({round(a["probs"][1], 3) for a in recs}) > 2
    frames = decode_all(out)
    assert len(frames) == 24 and frames[0].shape == (120, 160, 3)
    assert not list(tmp_path.glob(".*.tmp*"))


def test_stream_realtime_drops_and_bounds_latency(tmp_path, onnx_path):
    from edgeskd.stream import StreamConfig, run_stream

    video = make_video(tmp_path / "in.mp4", n=30, w=160, h=120, fps=60)
    # a slow model (25 ms per frame) behind a 60 fps source: most frames must be dropped
    import time

    from edgeskd.runtime.fake import FakeRunner
    from edgeskd.runtime.loader import load_runner

    def slow(model, batch):
        time.sleep(0.025)
        return model.infer(batch)

    runner = FakeRunner.wrapping(load_runner(onnx_path, threads=1), slow)
    out = tmp_path / "rt.mp4"
    res = run_stream(StreamConfig(video=str(video), realtime=True, measure_ceiling=False, out=out), runner=runner)
    s = res.stats
    assert s["source"]["realtime"] and s["source"]["paced"]
    assert s["frames_decoded"] == 30
    assert s["frames_processed"] + s["frames_dropped"] == 30
    assert s["frames_dropped"] >= 10
    # the annotated video keeps the source's timeline: dropped frames are gaps, not a faster video
    import av

    with av.open(str(out)) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    written = s["frames_processed"] - s["source"]["video_frames_skipped"]
    assert len(times) == written < 30 and times[-1] >= 20 / 60
    # newest-frame policy: latency ~ one or two processing times (25 ms each), never a growing queue
    assert s["latency_ms"]["p99"] < 120
    # file mode with the same slow model processes every frame, and frames wait in the queue
    res = run_stream(StreamConfig(video=str(video), realtime=False, measure_ceiling=False, max_frames=16), runner=runner)
    f = res.stats
    assert f["frames_processed"] == 16 and f["frames_dropped"] == 0
    assert s["latency_ms"]["p50"] < f["latency_ms"]["p50"]


def test_stream_cuda_path_wiring_on_cpu(tmp_path, onnx_path, monkeypatch):
    """A runner that declares ``supports_cuda_preprocess`` gets the CUDA path under --preprocess auto:
    each decoded frame goes into the runner's input buffer, ``infer_device`` runs on it, and the
    preprocessor is closed when the stream ends. The kernel is stood in for by the numpy reference
    (the real kernel against it: tests/test_cuda_preprocess.py, on a GPU)."""
    from edgeskd.runtime import cuda_preprocess
    from edgeskd.runtime.base import Runner
    from edgeskd.runtime.loader import load_runner
    from edgeskd.stream import StreamConfig, run_stream

    inner = load_runner(onnx_path, threads=1)

    class InPlaceRunner(Runner):
        backend = "in-place"
        supports_cuda_preprocess = True

        def __init__(self) -> None:
            super().__init__(inner.metadata, max_batch=4)
            self.input_buffer = np.zeros((4, 3, 32, 32), np.float32)

        def _infer_impl(self, batch):
            return inner.infer(batch)

        def infer_device(self, n):
            return self.infer(self.input_buffer[:n])

    class HostKernel:
        made: list = []

        def __init__(self, runner) -> None:
            self.runner, self.frames, self.closed = runner, 0, False
            HostKernel.made.append(self)

        def run_frame_into_runner(self, frame, crop, index, rgb=None) -> None:
            rgb = rgb if rgb is not None else frame.to_ndarray(format="rgb24")
            assert rgb.dtype == np.uint8 and rgb.shape == (120, 160, 3)
            self.runner.input_buffer[index] = preprocess_for(self.runner.metadata, rgb, crop=crop)[0]
            self.frames += 1

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(cuda_preprocess.CudaPreprocessor, "for_runner", classmethod(lambda cls, r: HostKernel(r)))
    video = make_video(tmp_path / "in.mp4", n=10, w=160, h=120)
    runner = InPlaceRunner()
    res = run_stream(StreamConfig(video=str(video), batch=4, realtime=False, measure_ceiling=False,
                                  jsonl=tmp_path / "p.jsonl"), runner=runner)
    (kernel,) = HostKernel.made
    assert res.stats["source"]["preprocess"] == "cuda" and kernel.frames == 10 and kernel.closed
    got = [json.loads(line)["probs"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    from edgeskd.runtime.postprocess import class_probabilities

    crop = res.stats["source"]["crop"]
    want = class_probabilities(inner.infer(preprocess_for(META, np.stack(decode_all(video)), crop=crop)), META)
    np.testing.assert_allclose(got, want, atol=1e-5)
    res = run_stream(StreamConfig(video=str(video), preprocess="cpu", measure_ceiling=False), runner=runner)
    assert res.stats["source"]["preprocess"] == "cpu" and len(HostKernel.made) == 1


def test_stream_rejects_bad_options(tmp_path, cli, onnx_path):
    video = make_video(tmp_path / "in.mp4", n=4)
    for args, code, msg in [
        (["--crop", "1,2,3"], 2, "x,y,w,h"),
        (["--crop", "0,0,999,10"], 2, "does not fit"),
        (["--smooth", "0"], 2, "(0, 1]"),
        (["--batch-size", "0"], 2, "--batch-size"),
        (["--realtime", "--batch-size", "4"], 2, "--no-realtime"),
        (["--out", str(tmp_path / "x.gif")], 2, "unsupported video container"),
        (["--preprocess", "cuda"], 5, "GPU"),
    ]:
        r = cli("stream", video, "--engine", onnx_path, *args)
        assert r.exit_code == code, (args, r.output)
        assert msg in r.output, (args, r.output)
        assert "Traceback" not in r.output


def test_call_hold_shows_a_call_once_it_has_held():
    from edgeskd.clinical.operating_point import NO_CALL, NO_POLYP_CALL
    from edgeskd.errors import UsageError
    from edgeskd.stream.smoothing import CallHold

    h = CallHold(0.1)
    t = [i / 30 for i in range(12)]
    seq = [NO_POLYP_CALL, 1, 1, NO_POLYP_CALL, 0, 0, 0, 0, 1, 1, 1, 1]   # a 2-frame flicker, then steady calls
    shown = [h.update(s, ti) for s, ti in zip(seq, t)]
    assert shown == [NO_POLYP_CALL, NO_CALL, NO_CALL, NO_POLYP_CALL, NO_CALL, NO_CALL, NO_CALL, 0,
                     NO_CALL, NO_CALL, NO_CALL, 1]
    at_15fps = CallHold(0.1)
    assert [at_15fps.update(1, i / 15) for i in range(4)] == [NO_CALL, NO_CALL, 1, 1]   # held for time, not frames
    assert [CallHold(0.0).update(s, ti) for s, ti in zip(seq, t)] == seq
    with pytest.raises(UsageError, match="--hold"):
        CallHold(-1)


def test_start_gate_holds_the_stream_until_go(tmp_path, onnx_path):
    """Load tests start N streams together: a stream with a start gate is set up (its ready file
    written) but processes no frame until GATE/go exists."""
    import threading
    import time

    from edgeskd.errors import UsageError
    from edgeskd.stream import StreamConfig, run_stream

    video = make_video(tmp_path / "v.mp4", n=10)
    gate = tmp_path / "gate"
    gate.mkdir()
    cfg = StreamConfig(video=str(video), engine=onnx_path, stats=tmp_path / "s.json", measure_ceiling=False,
                       start_gate=gate)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("res", run_stream(cfg)))
    t.start()
    deadline = time.monotonic() + 60
    while not list(gate.glob("ready-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(gate.glob("ready-*")) and t.is_alive()
    time.sleep(0.2)
    assert t.is_alive() and not (tmp_path / "s.json").exists()   # waiting at the gate
    (gate / "go").touch()
    t.join(60)
    res = out["res"]
    assert res.exit_code == 0 and res.stats["frames_processed"] == 10
    assert res.stats["source"]["stream_cpu_s"] > 0
    with pytest.raises(UsageError, match="--start-gate"):
        run_stream(StreamConfig(video=str(video), engine=onnx_path, start_gate=tmp_path / "nope"))
