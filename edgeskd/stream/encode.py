"""Write uint8 RGB frames to a video file with PyAV (used by synth-video and the tests)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from edgeskd.errors import UsageError, VideoError


def encode_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    fps: float | Fraction = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    faststart: bool = True,
    container_format: str | None = None,
) -> int:
    """Encode RGB uint8 (H, W, 3) frames; returns the number written. Writes ``path`` directly —
    wrap in ``edgeskd.utils.io.atomic_path`` for an atomic write. ``faststart`` puts the MP4 index
    first (a cut-off file still plays up to the cut)."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    opts = {"movflags": "+faststart"} if faststart and str(path).endswith((".mp4", ".mov")) else {}
    try:
        container = av.open(str(path), mode="w", format=container_format, options=opts)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise UsageError(f"cannot write video {path}: {getattr(e, 'strerror', None) or e}") from None
    n = 0
    try:
        stream = None
        for rgb in frames:
            rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = pix_fmt
                if options is None and codec == "libx264":
                    stream.options = {"preset": "veryfast", "crf": "20"}
                elif options:
                    stream.options = dict(options)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        if stream is None:
            raise VideoError(f"no frames to write to {path}")
        for packet in stream.encode():
            container.mux(packet)
    except av.error.FFmpegError as e:
        raise VideoError(f"encoding {path} with {codec}/{pix_fmt} failed: {getattr(e, 'strerror', None) or e}") from None
    finally:
        container.close()
    return n
