"""Per-frame ground truth: ``frame,class[,subclass][,has_polyp][,visible][,polyp_id]`` CSV (what
`synth-video` writes, and what `edgeskd frames` reads: both read a labels file the same way).

``class`` is a class name of the model (or its index). A frame **without a polyp** is one with
``has_polyp`` = 0, or whose class is the model's background class, names no polyp (``no_polyp``
/ ``no polyp``, whether or not the model has such a class), or is empty. A row with an empty class
but ``has_polyp`` = 1 (a polyp in view, its class not known) carries no ground truth and is left
out. Each frame has at most one row. ``polyp_id`` (optional) names the polyp a frame shows: any
name or number, the same for every frame of one polyp (``3`` and ``3.0`` are one polyp); empty or
-1 for none. With it the stream also decides per polyp (``edgeskd.clinical.per_polyp``).
``subclass`` (optional) gives the per-subtype frame accuracy.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dataclasses import dataclass

from edgeskd.data.records import HAS_POLYP_NO, HAS_POLYP_YES, NO_POLYP_NAMES
from edgeskd.errors import DataError, UsageError

__all__ = ["NO_POLYP_NAMES", "FrameTruth", "check_labels_file", "read_frame_labels", "read_truth", "read_polyp_ids"]

@dataclass
class FrameTruth:
    """The ground truth of a video: frame → class index for the frames that show a labelled polyp,
    the frames without a polyp, frame → polyp id (None: no ``polyp_id`` column) and frame → subtype
    name (None: no ``subclass`` column)."""

    labels: dict[int, int]
    no_polyp: set[int]
    polyp_ids: dict[int, int] | None
    subclasses: dict[int, str] | None
    polyp_names: dict[int, str] | None = None   # polyp id → the labels' own name for it (when not a number)


def _is_no_polyp(row: dict[str, str], background: str | None) -> bool:
    cls = row["class"].strip()
    has = row.get("has_polyp", "").strip().lower()
    if has in HAS_POLYP_NO:
        return True
    if cls == "":   # empty class: no polyp in view, unless the file says a polyp is there
        return has not in HAS_POLYP_YES
    if background is not None and cls.lower() == background.lower():
        return True
    return cls.lower() in NO_POLYP_NAMES


def _rows(path: str | Path) -> tuple[Path, list[str], list[tuple[int, dict[str, str], int]]]:
    """(path, lower-case header, [(line number, row with lower-case keys, frame index)])."""
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
    out = []
    seen: dict[int, int] = {}
    for lineno, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        try:
            frame = int(row["frame"])
        except ValueError:
            raise DataError(f"{p}:{lineno}: frame {row['frame']!r} is not an integer") from None
        if frame < 0:
            raise DataError(f"{p}:{lineno}: frame index {frame} is negative")
        if frame in seen:
            raise DataError(f"{p}:{lineno}: frame {frame} is listed twice (also on line {seen[frame]}); "
                            "give each frame one row")
        seen[frame] = lineno
        out.append((lineno, row, frame))
    return p, fields, out


def check_labels_file(path: str | Path) -> int:
    """A labels file that reads (header with frame,class; integer frames): its number of rows,
    else a one-line UsageError / DataError — for commands that check their inputs before working."""
    return len(_rows(path)[2])


def read_frame_labels(path: str | Path, class_names: list[str]) -> dict[int, int]:
    """frame index → class index of the frames that show a labelled polyp."""
    return read_truth(path, class_names).labels


def read_truth(path: str | Path, class_names: list[str], background: int | None = None,
               subclass_names: list[str] | None = None) -> FrameTruth:
    """The whole ground truth of a labels file (``FrameTruth``); ``background``: the model's
    background class, whose name also marks a frame without a polyp. ``subclass_names``: the
    model's; a subtype name two classes share is qualified there (``Adenoma.flat``, as training
    names it), and the labels' ``flat`` of an adenoma frame is read as that."""
    p, fields, rows = _rows(path)
    bg_name = class_names[background] if background is not None else None
    lookup = {n: i for i, n in enumerate(class_names) if i != background}
    lookup_lower = {n.lower(): i for n, i in lookup.items()}
    out: dict[int, int] = {}
    empty: set[int] = set()
    subs: dict[int, str] | None = {} if "subclass" in fields else None
    known_subs = set(subclass_names or [])
    for lineno, row, frame in rows:
        cls = row["class"]
        if _is_no_polyp(row, bg_name):
            empty.add(frame)
            continue
        if cls == "":
            continue
        if cls in lookup:
            out[frame] = lookup[cls]
        elif cls.lower() in lookup_lower:
            out[frame] = lookup_lower[cls.lower()]
        elif cls.isdigit() and int(cls) < len(class_names) and int(cls) != background:
            out[frame] = int(cls)
        else:
            raise DataError(
                f"{p}:{lineno}: class {cls!r} is not one of the model's classes ({', '.join(class_names)})"
            )
        if subs is not None and row.get("subclass"):
            sub = row["subclass"]
            qualified = f"{class_names[out[frame]]}.{sub}"
            subs[frame] = qualified if known_subs and sub not in known_subs and qualified in known_subs else sub
    if not out and not empty:
        raise DataError(f"labels file {p} has no labelled frames")
    ids, names = _polyp_ids(fields, rows)
    if ids is not None:
        check_polyp_classes(ids, out, path)
    return FrameTruth(out, empty, ids, subs, names)


def read_polyp_ids(path: str | Path) -> dict[int, int] | None:
    """frame index → polyp id for the frames that name one; None when the file has no ``polyp_id``
    column. Ids are read as names (``clinical.per_polyp.canonical_polyp_id``): integer ids >= 0 keep
    their number, other names are numbered in order of first appearance."""
    _, fields, rows = _rows(path)
    return _polyp_ids(fields, rows)[0]


def _polyp_ids(fields: list[str], rows: list[tuple[int, dict[str, str], int]]
               ) -> tuple[dict[int, int] | None, dict[int, str] | None]:
    """(frame → polyp id, polyp id → name for names that are not numbers) of a labels file's rows."""
    from edgeskd.clinical.per_polyp import canonical_polyp_id

    if "polyp_id" not in fields:
        return None, None
    names = {frame: pid for _, row, frame in rows if (pid := canonical_polyp_id(row.get("polyp_id", ""))) is not None}
    if all(n.isdigit() for n in names.values()):
        return {f: int(n) for f, n in names.items()}, None
    number: dict[str, int] = {}
    for f in sorted(names):
        number.setdefault(names[f], len(number))
    return {f: number[n] for f, n in names.items()}, {i: n for n, i in number.items()}


def check_polyp_classes(polyp_ids: dict[int, int], labels: dict[int, int], path: str | Path) -> None:
    """Every polyp's labelled frames must name one class (one polyp has one histology)."""
    seen: dict[int, tuple[int, int]] = {}
    for frame, pid in sorted(polyp_ids.items()):
        if frame not in labels:
            continue
        cls = labels[frame]
        first = seen.setdefault(pid, (cls, frame))
        if first[0] != cls:
            raise DataError(f"{path}: polyp {pid} is labelled class {first[0]} at frame {first[1]} and class {cls} "
                            f"at frame {frame}; one polyp has one class — give different polyps different ids")
