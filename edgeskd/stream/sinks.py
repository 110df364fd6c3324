"""Outputs of a stream run: annotated video (PyAV, own thread), JSON lines, stats JSON.

Every output is written to a temporary file next to its destination and renamed only when the run
succeeds (``edgeskd.utils.io.atomic_path``): a failed or interrupted run leaves no half-written file.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.errors import VideoError


class VideoSink:
    """The annotated video, encoded on its own thread. ``put(frame, annotation)``; ``close()`` flushes.

    File mode blocks when the writer is behind (every frame is written); real-time mode
    (``block=False``) skips frames instead, so writing never adds latency (``frames_skipped``).
    x264 ``ultrafast``: a 720p frame encodes in a few ms, which keeps the writer near stream speed.
    Each frame is placed at its source frame number (units of 1/rate): frames skipped or dropped in
    real-time mode leave gaps instead of shortening the video. Odd-sized sources get one black
    row / column of padding (4:2:0 needs even dimensions).

    ``render(frame_or_rgb, annotation) -> uint8 RGB`` runs on the writer thread too, so drawing and
    encoding overlap with inference.
    """

    def __init__(self, tmp_path: Path, width: int, height: int, rate, render: Callable[[Any, Any], np.ndarray],
                 *, queue_size: int = 16, crf: int = 23, preset: str = "ultrafast", block: bool = True) -> None:
        from edgeskd.data.video_writer import VideoWriter

        self.path = tmp_path
        self.render = render
        self.writer = VideoWriter(tmp_path, fps=rate, size=(width + (width & 1), height + (height & 1)),
                                  preset=preset, crf=crf)
        self.frames_skipped = 0      # real-time mode: frames not written because the writer was behind
        self.block = block
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edgeskd-writer", daemon=True)
        self._thread.start()

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

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
        try:
            while True:
                job = self._q.get()
                if job is None:
                    break
                if self.error is not None:
                    continue  # drain
                index = getattr(job[0], "index", None)
                self.writer.write(self.render(*job), pts=None if index is None else int(index))
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
