"""The one video writer (PyAV): uint8 RGB frames → H.264 (or MPEG-4) in MP4 / MKV / MOV / AVI.

Used by the synthetic video (``edgeskd synth-video``), the stream's annotated video and the tests.
It writes ``path`` directly: wrap it in ``edgeskd.utils.io.atomic_path`` for an atomic write.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

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
    """The first H.264 / MPEG-4 encoder this FFmpeg build has (libx264 where present)."""
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - not in this FFmpeg build
            continue
    raise VideoError("this FFmpeg build has no H.264 or MPEG-4 encoder; cannot write video")


def _av_text(e: BaseException) -> str:
    return str(getattr(e, "strerror", None) or e)


class VideoWriter:
    """``write(rgb[, pts])`` frames, then ``close()`` (or use it as a context manager).

    ``fps`` becomes a rational rate (denominator ≤ 1001). ``size`` = (width, height) of the video;
    without it the first frame decides. Frames smaller than ``size`` are padded with black on the
    right / bottom (4:2:0 needs even sizes: the stream's sink asks for one padding row / column on
    odd-sized sources). ``pts``, in units of 1/fps, places a frame on the timeline (frames not
    written leave gaps); a pts not after the previous one is skipped. libx264 gets ``preset`` and
    ``crf`` unless ``options`` are given. ``faststart`` puts the MP4 / MOV index first (a cut-off
    file still plays up to the cut).
    """

    def __init__(self, path: str | Path, *, fps: float | Fraction = 30, size: tuple[int, int] | None = None,
                 codec: str | None = None, pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
                 preset: str = "veryfast", crf: int = 20, faststart: bool = False,
                 container_format: str | None = None) -> None:
        import av

        self.path = Path(path)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.codec = codec or pick_encoder()
        self.pix_fmt = pix_fmt
        if options is not None:
            self.options = dict(options)
        else:
            self.options = {"preset": preset, "crf": str(crf)} if self.codec == "libx264" else {}
        fmt = container_format or VIDEO_SUFFIXES.get(self.path.suffix.lower())
        opts = {"movflags": "+faststart"} if faststart and self.path.suffix.lower() in (".mp4", ".mov") else {}
        try:
            self.container = av.open(str(path), mode="w", format=fmt, options=opts)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise UsageError(f"cannot write video {path}: {_av_text(e)}") from None
        self.stream: Any = None
        self.width = self.height = 0
        self._last_pts = -1
        self.frames_written = 0
        self._closed = False
        if size is not None:
            self._add_stream(*size)

    def _add_stream(self, width: int, height: int) -> None:
        self.stream = self.container.add_stream(self.codec, rate=self.rate)
        self.width, self.height = int(width), int(height)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = self.pix_fmt
        if self.options:
            self.stream.options = dict(self.options)

    def write(self, rgb: np.ndarray, pts: int | None = None) -> bool:
        """Encode one (H, W, 3) uint8 RGB frame; False if skipped (``pts`` not after the last)."""
        import av

        if pts is not None:
            if pts <= self._last_pts:
                return False
            self._last_pts = int(pts)
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if self.stream is None:
            self._add_stream(rgb.shape[1], rgb.shape[0])
        if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
            rgb = np.pad(rgb, ((0, self.height - rgb.shape[0]), (0, self.width - rgb.shape[1]), (0, 0)))
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if pts is not None:
            frame.pts = int(pts)
            frame.time_base = 1 / self.rate
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except av.error.FFmpegError as e:
            raise VideoError(f"encoding {self.path} with {self.codec}/{self.pix_fmt} failed: {_av_text(e)}") from None
        self.frames_written += 1
        return True

    def close(self, ok: bool = True) -> None:
        """Flush the encoder (only if ``ok``) and close the file."""
        import av

        if self._closed:
            return
        self._closed = True
        try:
            if ok and self.stream is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        except av.error.FFmpegError as e:
            raise VideoError(f"encoding {self.path} with {self.codec}/{self.pix_fmt} failed: {_av_text(e)}") from None
        finally:
            self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(ok=exc_type is None)


def encode_video(path: str | Path, frames: Iterable[np.ndarray], *, fps: float | Fraction = 30,
                 codec: str | None = "libx264", pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
                 faststart: bool = True, container_format: str | None = None) -> int:
    """Encode RGB uint8 (H, W, 3) frames into ``path``; returns the number written."""
    with VideoWriter(path, fps=fps, codec=codec, pix_fmt=pix_fmt, options=options, faststart=faststart,
                     container_format=container_format) as w:
        for rgb in frames:
            w.write(rgb)
        if not w.frames_written:
            raise VideoError(f"no frames to write to {path}")
    return w.frames_written
