"""Per-frame ground truth: ``frame,class[,subclass][,has_polyp]`` CSV (what `synth-video` writes).

``class`` is a class name of the model (or its index). Rows with an empty class (e.g. frames with
no polyp when the model has no such class; ``has_polyp`` = 0) carry no ground truth and are left
out of the metrics.
"""

from __future__ import annotations

import csv
from pathlib import Path

from edgeskd.errors import DataError, UsageError


def read_frame_labels(path: str | Path, class_names: list[str]) -> dict[int, int]:
    """frame index → class index."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"labels file {p} not found; give a CSV with columns frame,class")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labels file {p}: {e}") from None
    rows = csv.DictReader(text.splitlines())
    fields = [f.strip().lower() for f in (rows.fieldnames or [])]
    if "frame" not in fields or "class" not in fields:
        raise DataError(f"labels file {p} needs a header with columns frame,class (found: {', '.join(fields) or 'none'})")
    lookup = {n: i for i, n in enumerate(class_names)}
    lookup_lower = {n.lower(): i for i, n in enumerate(class_names)}
    out: dict[int, int] = {}
    for lineno, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        try:
            frame = int(row["frame"])
        except ValueError:
            raise DataError(f"{p}:{lineno}: frame {row['frame']!r} is not an integer") from None
        if frame < 0:
            raise DataError(f"{p}:{lineno}: frame index {frame} is negative")
        cls = row["class"]
        if cls == "":
            continue
        if cls in lookup:
            out[frame] = lookup[cls]
        elif cls.lower() in lookup_lower:
            out[frame] = lookup_lower[cls.lower()]
        elif cls.isdigit() and int(cls) < len(class_names):
            out[frame] = int(cls)
        else:
            raise DataError(
                f"{p}:{lineno}: class {cls!r} is not one of the model's classes ({', '.join(class_names)})"
            )
    if not out:
        raise DataError(f"labels file {p} has no labelled frames")
    return out
