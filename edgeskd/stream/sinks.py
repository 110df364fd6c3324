"""Outputs of a stream run, each a sink with ``write(result)`` / ``close()``: the annotated video
(PyAV, own thread) and JSON lines; the stats JSON comes from ``stats.StreamStats``.

Every output is written to a temporary file next to its destination and renamed only when the run
succeeds (``edgeskd.utils.io.atomic_path``): a failed or interrupted run leaves no half-written file.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

from edgeskd.clinical.operating_point import LOW_CONFIDENCE
from edgeskd.errors import VideoError
from edgeskd.stream import overlay
from edgeskd.stream.result import FrameResult

READOUT_EVERY = 8   # frames between updates of the fps / latency numbers drawn on the video (~4x/s)


class JsonlSink:
    """One JSON object per processed frame: frame, time, probs (calibrated), smoothed, class,
    smoothed_class, state (the smoothed class, or "low confidence" below the threshold) and
    raw_state (the same from the frame's own probs), latency_ms, and subclass + subclass_probs
    (subclass-logit models), crop (when cropped)."""

    def __init__(self, tmp_path: Path, meta: Any) -> None:
        self.class_names = list(meta.class_names)
        self.subclass_names = list(meta.subclass_names)
        self._f = open(tmp_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.lines = 0

    def record(self, r: FrameResult) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "frame": r.index,
            "time": round(r.time_s, 6),
            "probs": [round(float(v), 6) for v in r.probs],
            "smoothed": [round(float(v), 6) for v in r.smoothed],
            "class": self.class_names[r.pred],
            "smoothed_class": self.class_names[r.smoothed_pred],
            "state": self._state(r.state),
            "raw_state": self._state(r.raw_state),
            "latency_ms": round(r.latency_s * 1000.0, 3),
        }
        if r.subclass_probs is not None:
            rec["subclass"] = self.subclass_names[r.top_subclass]  # type: ignore[index]
            rec["subclass_probs"] = [round(float(v), 6) for v in r.subclass_probs]
        if r.crop is not None:
            rec["crop"] = list(r.crop)
        return rec

    def _state(self, state: int) -> str:
        return LOW_CONFIDENCE if state < 0 else self.class_names[state]

    def write(self, r: FrameResult) -> None:
        self._f.write(json.dumps(self.record(r), separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class VideoSink:
    """The annotated video: each frame with its overlay (``overlay.draw_annotation``), drawn and
    encoded on a writer thread so both overlap with inference. ``write(result)``; ``close()`` flushes.

    File mode blocks when the writer is behind (every frame is written); real-time mode
    (``block=False``) skips frames instead, so writing never adds latency (``frames_skipped``).
    x264 ``ultrafast``: a 720p frame encodes in a few ms, which keeps the writer near stream speed.
    Each frame is placed at its source frame number (units of 1/rate): frames skipped or dropped in
    real-time mode leave gaps instead of shortening the video. Odd-sized sources get one black
    row / column of padding (4:2:0 needs even dimensions).
    """

    def __init__(self, tmp_path: Path, width: int, height: int, rate: Any, meta: Any, *, queue_size: int = 16,
                 crf: int = 23, preset: str = "ultrafast", block: bool = True) -> None:
        from edgeskd.data.video_writer import VideoWriter

        self.path = tmp_path
        self.class_names = list(meta.class_names)
        self.subclass_names = list(meta.subclass_names)
        self.positive = int(meta.positive_class)
        self.writer = VideoWriter(tmp_path, fps=rate, size=(width + (width & 1), height + (height & 1)),
                                  preset=preset, crf=crf)
        self.frames_skipped = 0      # real-time mode: frames not written because the writer was behind
        self.block = block
        self._readout = (0.0, 0.0, -1)   # fps, latency ms, and the ordinal of the frame they were read on
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edgeskd-writer", daemon=True)
        self._thread.start()

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def annotation(self, r: FrameResult) -> overlay.Annotation:
        """The overlay of ``r``: its state — the smoothed class, or "low confidence" below the
        threshold — (raw in brackets), top subclass, P(positive), and fps / latency numbers that
        change every READOUT_EVERY frames (readable on screen)."""
        if r.ordinal - self._readout[2] >= READOUT_EVERY or self._readout[2] < 0:
            self._readout = (r.fps, r.latency_s * 1000.0, r.ordinal)
        sub = r.top_subclass
        return overlay.Annotation(
            class_name=self.class_names[r.smoothed_pred], prob=float(r.smoothed[r.smoothed_pred]),
            raw_class_name=self.class_names[r.pred], raw_prob=float(r.probs[r.pred]),
            subclass=self.subclass_names[sub] if sub is not None else None,
            subclass_prob=float(r.subclass_probs[sub]) if r.subclass_probs is not None and sub is not None else None,
            positive_prob=float(r.smoothed[self.positive]) if self.positive < len(r.smoothed) else 0.0,
            fps=self._readout[0], latency_ms=self._readout[1], crop=r.crop, is_positive=r.smoothed_pred == self.positive,
            low_confidence=r.state < 0, threshold=r.threshold,
        )

    def write(self, r: FrameResult) -> None:
        if self.error is not None:
            raise VideoError(f"writing the annotated video failed: {self.error}")
        job = (r.frame, self.annotation(r))
        if self.block:
            self._q.put(job)
            return
        try:
            self._q.put_nowait(job)
        except queue.Full:
            self.frames_skipped += 1

    def _run(self) -> None:
        try:
            while True:
                job = self._q.get()
                if job is None:
                    break
                if self.error is not None:
                    continue  # drain
                decoded, ann = job
                rgb = decoded.rgb if decoded.rgb is not None else decoded.frame.to_ndarray(format="rgb24")
                self.writer.write(overlay.draw_annotation(rgb, ann), pts=int(decoded.index))
        except BaseException as e:  # noqa: BLE001 - reported on the consumer thread
            self.error = e

    def close(self, ok: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._thread.join()
        self.writer.close(ok=ok and self.error is None)
        if ok and self.error is not None:
            raise VideoError(f"writing the annotated video failed: {self.error}")

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(ok=exc_type is None)
