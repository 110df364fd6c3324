"""Video sources: open a file / URL / V4L2 device with PyAV and decode it on its own thread.

Two delivery policies:

* file mode (``realtime=False``): a bounded FIFO; the decoder blocks when the consumer is behind,
  so every frame is processed.
* real-time mode (``realtime=True``): a one-slot mailbox that always holds the *newest* frame; a
  frame that is replaced before the consumer took it is counted as dropped, so latency stays
  bounded by one frame's processing time. A file source in real-time mode is paced at its own
  frame rate (it behaves like a live camera), otherwise it would simply be decoded as fast as
  possible and nearly every frame dropped.

Frames are handed over as decoded ``av.VideoFrame`` objects (still in the decoder's pixel format):
converting 1280x720 YUV to RGB costs more than decoding it, so the consumer converts only the pixels
it needs (see ``frames.py``). ``want_rgb=True`` makes the decoder thread also produce the full RGB
array (for the CUDA path and the annotated output).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import numpy as np

from edgeskd.errors import UsageError, VideoError

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp")
URL_SCHEMES = LIVE_SCHEMES + ("http", "https")
MAX_CONSECUTIVE_DECODE_ERRORS = 50


@dataclass
class VideoInfo:
    """What we know about a source once it is open (supervision-style)."""

    uri: str
    kind: str                      # "file" | "url" | "device"
    live: bool
    codec: str
    width: int
    height: int
    pix_fmt: str
    fps: float | None              # average frame rate, None if unknown
    frames: int | None             # frame count from the container, None if unknown
    duration_s: float | None
    variable_rate: bool = False    # the container's frame rate varies (average ≠ base rate): frames count in decode order
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


@dataclass
class DecodedFrame:
    index: int                     # 0-based frame number: its position in a file (from its timestamp, so
                                   # frames lost to damage leave gaps), the decode count on live sources
    time_s: float                  # presentation time in seconds (index / fps if unknown)
    t_decoded: float               # time.perf_counter() when it left the decoder
    frame: Any                     # av.VideoFrame
    rgb: np.ndarray | None = None  # full-frame uint8 RGB (only with want_rgb)


def classify_source(src: str) -> str:
    if src.startswith("/dev/video") or src.startswith("v4l2:"):
        return "device"
    scheme = urlparse(src).scheme.lower()
    if scheme in URL_SCHEMES:
        return "url"
    if "://" in src:
        raise UsageError(f"unsupported URL scheme {scheme!r} in {src}; use a file, rtsp/http(s) URL or /dev/videoN")
    return "file"


def _av_error_text(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return str(text).rstrip(".")


def open_container(src: str, *, timeout_s: float = 10.0):
    """Open ``src`` with PyAV; every failure becomes a one-line VideoError."""
    import av

    kind = classify_source(src)
    options: dict[str, str] = {}
    fmt = None
    if kind == "file":
        p = Path(src)
        if not p.exists():
            raise VideoError(f"video file {src} not found; check the path")
        if p.is_dir():
            raise VideoError(f"{src} is a directory, not a video file")
        if p.stat().st_size == 0:
            raise VideoError(f"video file {src} is empty (0 bytes); re-record or re-copy it")
        if not os.access(p, os.R_OK):
            raise VideoError(f"video file {src} is not readable; check its permissions")
    elif kind == "device":
        fmt = "v4l2"
        src = src[len("v4l2:"):] if src.startswith("v4l2:") else src
        if not Path(src).exists():
            raise VideoError(f"video device {src} does not exist; list devices with `ls /dev/video*`")
    elif urlparse(src).scheme.lower() in ("rtsp", "rtsps"):
        options["rtsp_transport"] = "tcp"
    try:
        container = av.open(src, mode="r", format=fmt, options=options, timeout=(timeout_s, timeout_s))
    except av.error.ExitError:
        raise VideoError(
            f"{src} did not answer within {timeout_s:g} s; check that the stream is up (or raise --timeout)"
        ) from None
    except (av.error.FFmpegError, OSError) as e:
        what = "connect to" if kind != "file" else "open"
        hint = "is it a complete video file?" if kind == "file" else "check the address and that the server is running"
        raise VideoError(f"cannot {what} {src}: {_av_error_text(e)} ({hint})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{src} has no video stream")
    return container


def video_info(container, src: str) -> VideoInfo:
    kind = classify_source(src)
    vs = container.streams.video[0]
    cc = vs.codec_context
    rate = vs.average_rate or vs.guessed_rate or None
    fps = float(rate) if rate else None
    base = vs.base_rate
    variable = bool(fps and base and abs(fps / float(base) - 1.0) > 0.01)
    frames = int(vs.frames) if vs.frames else None
    duration = None
    if vs.duration is not None and vs.time_base is not None:
        duration = float(vs.duration * vs.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    if frames is None and duration and fps and kind == "file":
        frames = None  # unknown exactly; expected count is estimated in frames_expected()
    scheme = urlparse(src).scheme.lower()
    live = kind == "device" or scheme in LIVE_SCHEMES or (kind == "url" and duration is None)
    return VideoInfo(
        uri=src, kind=kind, live=live, codec=cc.name, width=int(cc.width), height=int(cc.height),
        pix_fmt=str(cc.pix_fmt or (cc.format.name if cc.format else "?")), fps=fps, frames=frames,
        duration_s=duration, variable_rate=variable,
    )


def frames_expected(info: VideoInfo) -> int | None:
    """How many frames a complete file should hold (container count, else duration x fps)."""
    if info.live:
        return None
    if info.frames:
        return info.frames
    if info.duration_s and info.fps:
        return int(round(info.duration_s * info.fps))
    return None


class _LatestSlot:
    """A one-frame mailbox: put() replaces an unconsumed frame (counted as a drop). The end marker
    never replaces a frame: the last decoded frame is still delivered."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._has = False
        self._ended = False
        self.dropped = 0

    def put(self, item: Any, stop: threading.Event) -> bool:
        with self._cond:
            if item is _END:
                self._ended = True
            else:
                if self._has:
                    self.dropped += 1
                self._item, self._has = item, True
            self._cond.notify()
        return True

    def get(self, timeout: float | None = None) -> Any:
        with self._cond:
            ready = lambda: self._has or self._ended  # noqa: E731
            if not ready() and not self._cond.wait_for(ready, timeout):
                raise queue.Empty
            if not self._has:
                return _END
            item, self._item, self._has = self._item, None, False
            return item


class _Fifo:
    def __init__(self, maxsize: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.dropped = 0

    def put(self, item: Any, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float | None = None) -> Any:
        return self._q.get(timeout=timeout)

    def get_nowait(self) -> Any:
        return self._q.get_nowait()


_END = object()


class VideoSource:
    """Decode ``src`` on a background thread; iterate (or ``get_batch``) to receive frames.

    Use as a context manager; ``close()`` stops the thread and closes the container.
    """

    def __init__(
        self,
        src: str,
        *,
        realtime: bool | None = None,
        max_frames: int | None = None,
        queue_size: int = 4,
        want_rgb: bool = False,
        timeout_s: float = 10.0,
        pace: bool | None = None,
        decode_threads: str | None = None,
    ) -> None:
        self.src = str(src)
        self.container = open_container(self.src, timeout_s=timeout_s)
        try:
            self.info = video_info(self.container, self.src)
        except BaseException:
            self.container.close()
            raise
        self.realtime = self.info.live if realtime is None else bool(realtime)
        self.pace = (self.realtime and not self.info.live) if pace is None else pace
        self.max_frames = max_frames
        self.want_rgb = want_rgb
        self.decode_threads = decode_threads or default_decode_threads()
        self._chan: _LatestSlot | _Fifo = _LatestSlot() if self.realtime else _Fifo(queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_decoded = 0
        self.decode_errors = 0
        self.decode_busy_s = 0.0
        self.error: BaseException | None = None
        self.ended_early = False       # stopped because of an unrecoverable read/decode error
        self.t_start = 0.0
        self.t_end = 0.0
        self.decoder_cpu_s = 0.0      # CPU time of the decoder thread (its own + FFmpeg's on it)
        # file mode: a semaphore the decoder takes one token from before handing each frame over (the
        # recorder returns them), so a slower downstream stage holds back decoding, not decoded frames
        self.gate: threading.Semaphore | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "VideoSource":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgeskd-decoder", daemon=True)
            self.t_start = time.perf_counter()
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # unblock a decoder waiting on a full FIFO
            if isinstance(self._chan, _Fifo):
                while self._thread.is_alive():
                    try:
                        self._chan.get_nowait()
                    except queue.Empty:
                        self._thread.join(timeout=0.05)
            self._thread.join(timeout=5.0)
            self._thread = None
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - closing a broken container must not mask the real error
            pass

    def __enter__(self) -> "VideoSource":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def frames_dropped(self) -> int:
        return self._chan.dropped

    # -- decoder thread ------------------------------------------------------------------
    def _run(self) -> None:
        import av

        vs = self.container.streams.video[0]
        try:
            vs.thread_type = self.decode_threads
        except Exception:  # noqa: BLE001 - some decoders refuse threading; decode single-threaded
            pass
        tb = vs.time_base
        fps = self.info.fps or 30.0
        t0_wall = None
        pts0 = None
        # frame numbers of a file follow its timestamps, so a damaged stretch that loses frames
        # does not shift every later frame onto another frame's label (--labels); a variable-rate
        # file has no one frame period, so its frames count in decode order (as `edgeskd frames` does)
        by_time = not self.info.live and bool(self.info.fps) and tb is not None and not self.info.variable_rate
        t_first: float | None = float(vs.start_time * tb) if by_time and vs.start_time is not None else None
        last_idx = -1
        consecutive = 0
        cpu0 = time.thread_time()
        try:
            packets = self.container.demux(vs)
            while not self._stop.is_set():
                t_busy = time.perf_counter()
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.EOFError:
                    break
                except (av.error.FFmpegError, OSError) as e:
                    # unreadable container data (truncated file, dropped connection): stop here
                    self.ended_early = True
                    self.error = VideoError(f"reading {self.src} failed: {_av_error_text(e)}")
                    break
                try:
                    frames = packet.decode()
                    consecutive = 0
                except (av.error.FFmpegError, ValueError) as e:
                    self.decode_errors += 1
                    consecutive += 1
                    if consecutive > MAX_CONSECUTIVE_DECODE_ERRORS:
                        self.ended_early = True
                        self.error = VideoError(f"decoding {self.src} failed repeatedly: {_av_error_text(e)}")
                        break
                    continue
                self.decode_busy_s += time.perf_counter() - t_busy
                for frame in frames:
                    if self.max_frames is not None and self.frames_decoded >= self.max_frames:
                        self._stop.set()
                        break
                    idx = self.frames_decoded
                    if frame.pts is not None and tb is not None:
                        t_s = float(frame.pts * tb)
                        if by_time:
                            if t_first is None:
                                t_first = t_s
                            idx = int(round((t_s - t_first) * fps))
                    else:
                        t_s = idx / fps
                    idx = last_idx = max(idx, last_idx + 1)   # unique and increasing, whatever the timestamps
                    if self.pace:
                        if t0_wall is None:
                            t0_wall, pts0 = time.perf_counter(), t_s
                        delay = t0_wall + (t_s - pts0) - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    rgb = None
                    if self.want_rgb:
                        t_c = time.perf_counter()
                        rgb = frame.to_ndarray(format="rgb24")
                        self.decode_busy_s += time.perf_counter() - t_c
                    if self.gate is not None and not self._take_gate():
                        break
                    self.frames_decoded += 1
                    item = DecodedFrame(idx, t_s, time.perf_counter(), frame, rgb)
                    if not self._chan.put(item, self._stop):
                        break
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer thread
            self.error = e
        finally:
            self.t_end = time.perf_counter()
            self.decoder_cpu_s = time.thread_time() - cpu0
            self._chan.put(_END, threading.Event())

    def _take_gate(self) -> bool:
        """Wait for a token of ``gate``; False when the source is being stopped."""
        while not self.gate.acquire(timeout=0.1):  # type: ignore[union-attr]
            if self._stop.is_set():
                return False
        return True

    # -- consumer side --------------------------------------------------------------------
    def _raise_if_fatal(self) -> None:
        if self.error is not None and not isinstance(self.error, VideoError):
            raise self.error

    def get(self, timeout: float | None = None) -> DecodedFrame | None:
        """Next frame, or None at the end of the stream."""
        self.start()
        while True:
            try:
                item = self._chan.get(timeout=0.5 if timeout is None else timeout)
            except queue.Empty:
                if timeout is not None:
                    raise
                continue
            if item is _END:
                self._raise_if_fatal()
                return None
            return item

    def get_batch(self, n: int) -> list[DecodedFrame]:
        """Up to ``n`` frames: waits for the first, then takes what is already decoded (file mode),
        waiting for more only while the decoder is still running. Empty list = end of stream."""
        first = self.get()
        if first is None:
            return []
        batch = [first]
        if n <= 1 or not isinstance(self._chan, _Fifo):
            return batch
        while len(batch) < n:
            try:
                item = self._chan.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is _END:
                self._chan.put(_END, threading.Event())  # keep the end marker for the next call
                break
            batch.append(item)
        return batch

    def __iter__(self) -> Iterator[DecodedFrame]:
        while (item := self.get()) is not None:
            yield item


def default_decode_threads() -> str:
    """FFmpeg frame/slice threading ("AUTO") pays off with cores to spare; on a 2-core box one
    decoder thread on one core and inference on the other is faster (measured: ~465 vs ~410 fps
    for 720p H.264 + tiny_cnn), since AUTO's extra threads compete with inference."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return "AUTO" if n > 2 else "NONE"


def measure_decode_fps(
    src: str, *, max_frames: int | None = None, time_budget_s: float = 5.0,
    settings: tuple[str, ...] = ("AUTO", "NONE"),
) -> dict[str, Any]:
    """Decode-only throughput of a file (demux + decode, no colour conversion), the best over the
    FFmpeg thread settings in ``settings`` (a strict ceiling). Each pass is bounded by
    ``max_frames`` and ``time_budget_s``."""
    runs = {t: _decode_pass(src, max_frames, time_budget_s, t) for t in settings}
    best = max(runs, key=lambda t: runs[t]["fps"] or 0.0)
    return {**runs[best], "threads": best, "per_setting": {t: r["fps"] for t, r in runs.items()},
            "cpu_ms_per_frame": {t: r["cpu_ms_per_frame"] for t, r in runs.items()}}


def _decode_pass(src: str, max_frames: int | None, time_budget_s: float, decode_threads: str) -> dict[str, Any]:
    import av

    container = open_container(src)
    try:
        vs = container.streams.video[0]
        try:
            vs.thread_type = decode_threads
        except Exception:  # noqa: BLE001
            pass
        n = 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            for _ in container.decode(vs):
                n += 1
                if (max_frames is not None and n >= max_frames) or time.perf_counter() - t0 > time_budget_s:
                    break
        except (av.error.FFmpegError, OSError):
            pass  # a truncated file: the frames decoded so far still measure the rate
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        container.close()
    return {"fps": (n / dt) if n and dt > 0 else None, "frames": n, "seconds": dt,
            "cpu_ms_per_frame": round(cpu * 1000.0 / n, 3) if n else None}


def rate_fraction(fps: float | None) -> Fraction:
    if not fps or fps <= 0 or fps > 1000:
        return Fraction(30, 1)
    return Fraction(fps).limit_denominator(1001)
