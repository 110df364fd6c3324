"""Bad and unusual video inputs for `edgeskd stream`: each gives a one-line message and an exit code,
never a traceback, and never leaves a half-written output file. All files are generated here."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from helpers_stream import make_onnx, make_video

pytest.importorskip("av")


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


def _run(cli, tmp_path, video, engine, *extra):
    out, st = tmp_path / "out" / "ann.mp4", tmp_path / "out" / "stats.json"
    r = cli("stream", video, "--engine", engine, "--out", out, "--stats", st, *extra)
    assert "Traceback" not in r.output
    return r, out, st


def _no_leftovers(tmp_path: Path) -> None:
    d = tmp_path / "out"
    assert not d.exists() or not any(d.iterdir()), list(d.iterdir())


def _one_line_error(r, code: int, *words: str) -> None:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), r.output
    for w in words:
        assert w in r.output, (w, r.output)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "random", "directory"])
def test_unreadable_inputs(tmp_path, cli, onnx_path, case):
    p = tmp_path / "in.mp4"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("this is not a video\n" * 20)
    elif case == "random":
        import numpy as np

        p.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    elif case == "directory":
        p.mkdir()
    r, _, _ = _run(cli, tmp_path, p, onnx_path)
    words = {"missing": ["not found"], "empty": ["empty"], "directory": ["directory"]}.get(case, ["in.mp4"])
    _one_line_error(r, 7, *words)
    _no_leftovers(tmp_path)


def test_truncated_faststart_file_processes_what_decodes(tmp_path, cli, onnx_path):
    """Index at the front (faststart), data cut at 60%: the decodable frames are processed, the lost
    ones are counted; exit 0 with a warning, since every output is complete for what was decoded."""
    full = make_video(tmp_path / "full.mp4", n=60, w=160, h=120, faststart=True)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    r, out, st = _run(cli, tmp_path, cut, onnx_path)
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "truncated" in r.output and "could not be decoded" in r.output
    s = json.loads(st.read_text())
    assert 0 < s["frames_decoded"] < 60
    assert s["source"]["frames_lost"] == 60 - s["frames_decoded"]
    assert out.exists() and s["frames_processed"] == s["frames_decoded"]


def test_truncated_file_without_index_is_a_clean_error(tmp_path, cli, onnx_path):
    full = make_video(tmp_path / "full.mp4", n=30, faststart=False)   # moov atom at the end
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    r, _, _ = _run(cli, tmp_path, cut, onnx_path)
    _one_line_error(r, 7, "cut.mp4")
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("kind,kw,suffix", [
    ("odd", dict(w=641, h=479, pix_fmt="yuv444p"), ".mp4"),
    ("portrait", dict(w=120, h=200), ".mp4"),
    ("yuv444", dict(pix_fmt="yuv444p"), ".mkv"),
    ("10bit", dict(pix_fmt="yuv420p10le"), ".mp4"),
    ("mjpeg", dict(codec="mjpeg", pix_fmt="yuvj422p", w=161, h=121), ".avi"),
])
def test_unusual_formats_stream(tmp_path, cli, onnx_path, kind, kw, suffix):
    n = 6
    video = make_video(tmp_path / f"in{suffix}", n=n, **kw)
    r, out, st = _run(cli, tmp_path, video, onnx_path, "--crop", "auto")
    assert r.exit_code == 0, r.output
    s = json.loads(st.read_text())
    assert s["frames_processed"] == n
    w, h = kw.get("w", 160), kw.get("h", 120)
    assert (s["source"]["width"], s["source"]["height"]) == (w, h)
    import av

    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        # 4:2:0 output: odd sizes get one padding row/column
        assert (vs.codec_context.width, vs.codec_context.height) == (w + (w & 1), h + (h & 1))
        assert sum(1 for _ in c.decode(vs)) == n


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_url_closed_port(tmp_path, cli, onnx_path):
    url = f"http://127.0.0.1:{_free_port()}/live.mp4"
    r, _, _ = _run(cli, tmp_path, url, onnx_path, "--timeout", "2")
    _one_line_error(r, 7, "cannot connect", "refused")
    _no_leftovers(tmp_path)


def test_url_that_never_answers_times_out(tmp_path, cli, onnx_path):
    """A local server that accepts the connection and then says nothing."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                conns.append(srv.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/live.mp4"
        r, _, _ = _run(cli, tmp_path, url, onnx_path, "--timeout", "1")
        _one_line_error(r, 7, "did not answer within 1 s")
    finally:
        srv.close()
        for c in conns:
            c.close()
    _no_leftovers(tmp_path)


def test_unsupported_url_scheme(tmp_path, cli, onnx_path):
    r, _, _ = _run(cli, tmp_path, "gopher://example/x", onnx_path)
    _one_line_error(r, 2, "unsupported URL scheme")


def test_out_not_writable(tmp_path, cli, onnx_path):
    video = make_video(tmp_path / "in.mp4", n=4)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    st = tmp_path / "stats.json"
    r = cli("stream", video, "--engine", onnx_path, "--out", blocker / "ann.mp4", "--stats", st)
    _one_line_error(r, 2, "cannot create output directory")
    assert not st.exists()          # the other outputs are not written either


def test_engine_without_metadata(tmp_path, cli):
    bare = make_onnx(tmp_path / "bare.onnx", meta=None)
    video = make_video(tmp_path / "in.mp4", n=4)
    r, _, _ = _run(cli, tmp_path, video, bare)
    _one_line_error(r, 4, "metadata", "class_names")
    _no_leftovers(tmp_path)


def test_missing_engine_and_labels(tmp_path, cli, onnx_path):
    video = make_video(tmp_path / "in.mp4", n=4)
    r, _, _ = _run(cli, tmp_path, video, tmp_path / "nope.onnx")
    _one_line_error(r, 4, "nope.onnx")
    r, _, _ = _run(cli, tmp_path, video, onnx_path, "--labels", tmp_path / "nope.csv")
    _one_line_error(r, 2, "labels file")
    _no_leftovers(tmp_path)


def test_ctrl_c_ends_the_stream_and_keeps_complete_outputs(tmp_path, onnx_path, monkeypatch):
    """Ctrl-C is how a live stream ends: the outputs are finished for the frames processed so far.
    A Ctrl-C while they are being finished aborts and leaves none of them."""
    from edgeskd.runtime.fake import FakeRunner
    from edgeskd.runtime.loader import load_runner
    from edgeskd.stream import StreamConfig, run_stream
    from edgeskd.stream import stats as stream_stats

    video = make_video(tmp_path / "in.mp4", n=20)
    calls = {"n": 0}

    def boom(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return model.infer(batch)

    runner = FakeRunner.wrapping(load_runner(onnx_path, threads=1), boom)
    outdir = tmp_path / "out"
    cfg = StreamConfig(video=str(video), out=outdir / "a.mp4", jsonl=outdir / "p.jsonl", stats=outdir / "s.json",
                       measure_ceiling=False)
    warned: list[str] = []
    res = run_stream(cfg, runner=runner, warn=warned.append)
    assert res.stats["frames_processed"] == 4 and res.stats["source"]["interrupted"] is True
    assert any("Ctrl-C" in w for w in warned)
    assert json.loads((outdir / "s.json").read_text())["frames_processed"] == 4
    assert len((outdir / "p.jsonl").read_text().splitlines()) == 4
    assert (outdir / "a.mp4").stat().st_size > 0
    assert sorted(p.name for p in outdir.iterdir()) == ["a.mp4", "p.jsonl", "s.json"]   # no temp files

    def interrupted_while_finishing(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(stream_stats, "stats_dict", interrupted_while_finishing)
    outdir2 = tmp_path / "out2"
    cfg2 = StreamConfig(video=str(video), out=outdir2 / "a.mp4", jsonl=outdir2 / "p.jsonl",
                        stats=outdir2 / "s.json", measure_ceiling=False)
    with pytest.raises(KeyboardInterrupt):
        run_stream(cfg2, runner=load_runner(onnx_path, threads=1))
    assert not any(outdir2.iterdir())


def test_corrupted_middle_is_processed_with_a_warning_or_concealed(tmp_path, cli, onnx_path):
    """Garbage over the middle of the media data: the decoder conceals or skips what it cannot
    decode; the run completes (exit 0) and says what was lost, if anything."""
    import numpy as np

    full = make_video(tmp_path / "full.mp4", n=40, w=160, h=120, faststart=True)
    data = bytearray(full.read_bytes())
    a, b = int(len(data) * 0.45), int(len(data) * 0.6)
    data[a:b] = np.random.default_rng(1).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    jl = tmp_path / "p.jsonl"
    r, out, st = _run(cli, tmp_path, bad, onnx_path, "--jsonl", jl)
    assert r.exit_code == 0, r.output
    s = json.loads(st.read_text())
    assert s["frames_processed"] >= 1 and out.exists()
    lost = s["source"]["frames_lost"] + s["source"]["decode_errors"]
    assert (lost > 0) == ("warning" in r.output)
    # frame numbers are positions in the video (what --labels rows name), also after lost frames
    recs = [json.loads(line) for line in jl.read_text().splitlines()]
    fps = s["source"]["fps"]
    t0 = recs[0]["time"] - recs[0]["frame"] / fps
    assert all(round((rec["time"] - t0) * fps) == rec["frame"] for rec in recs)
    assert [rec["frame"] for rec in recs] == sorted({rec["frame"] for rec in recs})
