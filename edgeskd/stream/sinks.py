"""Outputs of a stream run: annotated video (PyAV, own thread), JSON lines, stats JSON.

Every output is written to a temporary file next to its destination and renamed only when the run
succeeds (``edgeskd.utils.io.atomic_path``): a failed or interrupted run leaves no half-written file.
"""

from __future__ import annotations

import json
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.errors import UsageError, VideoError

VIDEO_SUFFIXES = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}


def check_video_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise UsageError(f"--out {p}: unsupported video container {p.suffix or '(none)'}; use one of "
                         + ", ".join(sorted(VIDEO_SUFFIXES)))
    return p


def pick_encoder() -> str:
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - not in this FFmpeg build
            continue
    raise VideoError("this FFmpeg build has no H.264 or MPEG-4 encoder; cannot write --out")


class VideoSink:
    """H.264 writer on its own thread. ``put(frame, annotation)``; ``close()`` flushes.

    File mode blocks when the writer is behind (every frame is written); real-time mode
    (``block=False``) skips frames instead, so writing never adds latency (``frames_skipped``).
    x264 ``ultrafast``: a 720p frame encodes in a few ms, which keeps the writer near stream speed.

    ``render(frame_or_rgb, annotation) -> uint8 RGB`` runs on the writer thread too, so drawing and
    encoding overlap with inference.
    """

    def __init__(self, tmp_path: Path, width: int, height: int, rate, render: Callable[[Any, Any], np.ndarray],
                 *, queue_size: int = 16, crf: int = 23, preset: str = "ultrafast", block: bool = True) -> None:
        import av

        self.path = tmp_path
        self.render = render
        self.codec = pick_encoder()
        fmt = VIDEO_SUFFIXES[Path(str(tmp_path)).suffix.lower()]
        try:
            self.container = av.open(str(tmp_path), mode="w", format=fmt)
        except (av.error.FFmpegError, OSError) as e:
            raise UsageError(f"cannot write video {tmp_path}: {getattr(e, 'strerror', None) or e}") from None
        self.stream = self.container.add_stream(self.codec, rate=rate)
        # 4:2:0 needs even dimensions: odd-sized sources get one black row/column of padding
        self.width, self.height = width + (width & 1), height + (height & 1)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            self.stream.options = {"preset": preset, "crf": str(crf)}
        self.time_base = Fraction(1) / Fraction(rate)
        self._last_pts = -1
        self.frames_written = 0
        self.frames_skipped = 0      # real-time mode: frames not written because the writer was behind
        self.block = block
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edgeskd-writer", daemon=True)
        self._thread.start()

    def put(self, item: Any, annotation: Any) -> None:
        if self.error is not None:
            raise VideoError(f"writing the annotated video failed: {self.error}")
        if self.block:
            self._q.put((item, annotation))
            return
        try:
            self._q.put_nowait((item, annotation))
        except queue.Full:
            self.frames_skipped += 1

    def _run(self) -> None:
        import av

        try:
            while True:
                job = self._q.get()
                if job is None:
                    break
                if self.error is not None:
                    continue  # drain
                rgb = self.render(*job)
                if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
                    rgb = np.pad(rgb, ((0, self.height - rgb.shape[0]), (0, self.width - rgb.shape[1]), (0, 0)))
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                # the source frame's number as its time (units of 1/rate): frames skipped or
                # dropped in real-time mode leave gaps instead of shortening the video
                index = getattr(job[0], "index", None)
                if index is not None:
                    if index <= self._last_pts:
                        continue
                    frame.pts = self._last_pts = int(index)
                    frame.time_base = self.time_base
                for packet in self.stream.encode(frame):
                    self.container.mux(packet)
                self.frames_written += 1
        except BaseException as e:  # noqa: BLE001 - reported on the consumer thread
            self.error = e

    def close(self, ok: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._thread.join()
        try:
            if ok and self.error is None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
        if ok and self.error is not None:
            raise VideoError(f"writing the annotated video failed: {self.error}")

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        self.close(ok=exc_type is None)


class JsonlSink:
    def __init__(self, tmp_path: Path) -> None:
        self._f = open(tmp_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
