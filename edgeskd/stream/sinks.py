"""Outputs of a stream run, each a sink with ``write(result)`` / ``close()``: the annotated video
(PyAV, own thread) and JSON lines; the stats JSON comes from ``stats.StreamStats``.

Every output is written to a temporary file next to its destination and renamed only when the run
succeeds (``edgeskd.utils.io.atomic_path``): a failed or interrupted run leaves no half-written file.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

from edgeskd.clinical.operating_point import state_name
from edgeskd.errors import VideoError
from edgeskd.stream import overlay
from edgeskd.clinical.operating_point import NO_CALL, NO_POLYP_CALL
from edgeskd.stream.result import FrameResult

READOUT_EVERY = 8   # frames between updates of the fps / latency numbers drawn on the video (~4x/s)
REALTIME_QUEUE = 64  # real-time mode: frames the recorder may fall behind (~2 s at 30 fps) before one is skipped


class JsonlSink:
    """One JSON object per processed frame: frame, time, probs (calibrated), smoothed, class,
    smoothed_class, state (the smoothed class, or "low confidence" below the threshold) and
    raw_state (the same from the frame's own probs), latency_ms, and subclass + subclass_probs
    (subclass-logit models), crop (when cropped).

    A model with a "no polyp" class adds ``presence`` / ``smoothed_presence`` (1 − P(background)) and
    ``polyp_probs`` (the probabilities conditional on a polyp, over the polyp classes); ``probs`` is
    its whole distribution; ``state`` / ``raw_state`` may be "no polyp", and a frame whose own
    probabilities say "no polyp" has ``class`` null and no ``subclass``."""

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
            "class": self.class_names[r.pred] if r.present else None,
            "smoothed_class": self.class_names[r.smoothed_pred] if r.state != NO_POLYP_CALL else None,
            "state": self._state(r.state),
            "raw_state": self._state(r.raw_state),
            "latency_ms": round(r.latency_s * 1000.0, 3),
        }
        if r.presence is not None:
            rec["presence"] = round(r.presence_probability(), 6)
            rec["smoothed_presence"] = round(r.presence_probability(smoothed=True), 6)
            rec["polyp_probs"] = [round(float(v), 6) for v in r.presence.conditional(r.probs)]
        if r.subclass_probs is not None:
            if r.present:
                rec["subclass"] = self.subclass_names[r.top_subclass]  # type: ignore[index]
            rec["subclass_probs"] = [round(float(v), 6) for v in r.subclass_probs]
        if r.crop is not None:
            rec["crop"] = list(r.crop)
        return rec

    def _state(self, state: int) -> str:
        return state_name(state, self.class_names)

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
    encoded on a writer thread, off the live path (frame decoded → decision), behind a bounded
    queue. ``write(result)`` only enqueues; ``close()`` flushes.

    * File mode (``block=True``): every frame is written. Back-pressure does not act on the live
      loop: the decoder takes a token from ``tokens`` before it hands a frame over and the writer
      returns one per frame encoded (``VideoSource(gate=sink.tokens)``), so when the encoder is the
      slowest stage the *decoder* waits, frames never queue behind the encoder with their clock
      running, and the live latency stays that of inference. Without a gate ``write`` blocks when
      the queue is full (the old behaviour).
    * Real-time mode (``block=False``): ``write`` never blocks; the queue holds ``queue_size`` frames
      (about two seconds at 30 fps by default), which absorbs the encoder's bursts; a frame is skipped
      only when the queue is full (``frames_skipped``, counted and reported).

    ``recording_stats()``: frames written / skipped, the queue's high-water mark and the recording
    lag (decision → frame encoded), apart from the live latency. x264 ``ultrafast``: a 720p frame
    encodes in a few ms. Each frame is placed at its source frame number (units of 1/rate): frames
    skipped or dropped in real-time mode leave gaps instead of shortening the video. Odd-sized
    sources get one black row / column of padding (4:2:0 needs even dimensions).
    """

    def __init__(self, tmp_path: Path, width: int, height: int, rate: Any, meta: Any, *, queue_size: int | None = None,
                 crf: int = 23, preset: str = "ultrafast", block: bool = True) -> None:
        from edgeskd.data.video_writer import VideoWriter

        self.path = tmp_path
        self.class_names = list(meta.class_names)
        self.subclass_names = list(meta.subclass_names)
        self.positive = int(meta.positive_class)
        self.writer = VideoWriter(tmp_path, fps=rate, size=(width + (width & 1), height + (height & 1)),
                                  preset=preset, crf=crf)
        self.frames_skipped = 0      # real-time mode: frames not written because the queue was full
        self.block = block
        size = int(queue_size) if queue_size is not None else (16 if block else REALTIME_QUEUE)
        self.queue_size = size
        self.tokens = threading.Semaphore(size)   # file mode: the decoder's gate (see the class doc)
        self.queue_max = 0
        self.lags_s: list[float] = []
        self._readout = (0.0, 0.0, -1)   # fps, latency ms, and the ordinal of the frame they were read on
        self._q: queue.Queue = queue.Queue(maxsize=size)
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edgeskd-writer", daemon=True)
        self._thread.start()

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def annotation(self, r: FrameResult) -> overlay.Annotation:
        """The overlay of ``r``: its state — the smoothed class, or "low confidence" below the
        threshold, or "no polyp" — (raw in brackets), top subclass, P(positive), and fps / latency
        numbers that change every READOUT_EVERY frames (readable on screen). With a "no polyp" class
        the probabilities shown are those conditional on a polyp."""
        if r.ordinal - self._readout[2] >= READOUT_EVERY or self._readout[2] < 0:
            self._readout = (r.fps, r.latency_s * 1000.0, r.ordinal)
        sub = r.top_subclass
        pr = r.presence
        sm, raw = r.smoothed, r.probs
        if pr is not None:   # conditional probabilities, indexed like the classes (background 0)
            sm, raw = pr.conditional_full(sm), pr.conditional_full(raw)
        no_polyp = r.state == NO_POLYP_CALL
        return overlay.Annotation(
            class_name=self.class_names[r.smoothed_pred], prob=float(sm[r.smoothed_pred]),
            raw_class_name=self.class_names[r.pred] if r.present else "no polyp", raw_prob=float(raw[r.pred]),
            subclass=self.subclass_names[sub] if sub is not None and not no_polyp else None,
            subclass_prob=float(r.subclass_probs[sub]) if r.subclass_probs is not None and sub is not None else None,
            positive_prob=float(sm[self.positive]) if self.positive < len(sm) else 0.0,
            fps=self._readout[0], latency_ms=self._readout[1], crop=r.crop, is_positive=r.smoothed_pred == self.positive,
            low_confidence=r.state == NO_CALL, threshold=r.threshold, no_polyp=no_polyp,
            presence=r.presence_probability(smoothed=True),
        )

    def write(self, r: FrameResult) -> None:
        if self.error is not None:
            raise VideoError(f"writing the annotated video failed: {self.error}")
        job = (r.frame, self.annotation(r), time.perf_counter())
        if self.block:
            self._q.put(job)
        else:
            try:
                self._q.put_nowait(job)
            except queue.Full:
                self.frames_skipped += 1
                return
        self.queue_max = max(self.queue_max, self._q.qsize())

    def _run(self) -> None:
        try:
            while (job := self._q.get()) is not None:
                try:
                    decoded, ann, t_put = job
                    rgb = decoded.rgb if decoded.rgb is not None else decoded.frame.to_ndarray(format="rgb24")
                    self.writer.write(overlay.draw_annotation(rgb, ann), pts=int(decoded.index))
                    self.lags_s.append(time.perf_counter() - t_put)
                finally:
                    self.tokens.release()
        except BaseException as e:  # noqa: BLE001 - reported on the consumer thread
            self.error = e
            while self._q.get() is not None:   # drain until close(), keeping the decoder's gate open
                self.tokens.release()

    def recording_stats(self) -> dict[str, Any]:
        """What the recording did, apart from the live latency: frames written / skipped, the queue
        (size, high-water mark) and the lag from decision to encoded frame (ms percentiles)."""
        from edgeskd.stream.stats import percentiles_ms

        return {"frames_written": self.frames_written, "frames_skipped": self.frames_skipped,
                "queue_size": self.queue_size, "queue_max": self.queue_max, "blocking": self.block,
                "lag_ms": percentiles_ms(self.lags_s)}

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

