"""Annotated videos → a training set (`edgeskd frames`): frames + a grouped manifest.

Input: videos and, for each, a per-frame labels CSV ``frame,class[,subclass],polyp_id`` (what
``edgeskd synth-video`` writes; other columns such as ``has_polyp`` and ``visible`` are ignored).
Every frame of the video has one row. A frame whose class is empty or ``no_polyp`` has no polyp in
view: it becomes the "no polyp" class (its subclass, when given, is the kind of bare wall; else
``no_polyp``). A polyp frame needs its ``polyp_id``; one polyp has one class.

Output (written atomically: nothing is left behind when any input is bad)::

    OUT/manifest.csv      path,class,subclass,group[,split]
    OUT/images/<video stem>/<frame>.png
    OUT/dataset.json      class order (the "no polyp" class last), background_class

``group`` = ``<video stem>/polyp<id>`` for polyp frames and ``<video stem>/nopolyp<k>`` for the
k-th stretch of polyp-free frames of a video: `train` splits by it, so no polyp is in two splits.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeskd.data.records import (BACKGROUND_NAME, HAS_POLYP_NO, HAS_POLYP_YES, NO_POLYP_NAMES, POSITIVE_NAMES, SIDECAR,
                                   SIDECAR_VERSION, positive_class_index)
from edgeskd.clinical.per_polyp import canonical_polyp_id
from edgeskd.errors import DataError, UsageError, VideoError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
HEADER = ("path", "class", "subclass", "group")


@dataclass
class FrameLabel:
    cls: str          # BACKGROUND_NAME for no polyp
    sub: str
    polyp: str        # polyp id ("" for no polyp)


def _check_name(value: str, what: str, where: str) -> str:
    if not _NAME.match(value):
        raise DataError(f"{where}: {what} {value!r} is not a usable name (letters, digits, _ . + - only)")
    return value


def read_video_labels(path: Path, *, classes: Sequence[str] | None = None) -> list[FrameLabel]:
    """Rows of a labels CSV, indexed by frame (frames 0..N-1, each once)."""
    if not Path(path).is_file():
        raise UsageError(f"labels file {path} " + ("is a directory; give the CSV file" if Path(path).is_dir()
                                                    else "not found; check the path"))
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labels file {path}: {getattr(e, 'strerror', None) or e}") from None
    reader = csv.DictReader(text.splitlines())
    fields = [(f or "").strip().lower() for f in (reader.fieldnames or [])]
    missing = [c for c in ("frame", "class", "polyp_id") if c not in fields]
    if missing:
        raise DataError(f"labels file {path} lacks column(s) {', '.join(missing)} (found: {', '.join(fields) or 'none'}); "
                        "the header is frame,class[,subclass],polyp_id")
    rows: dict[int, FrameLabel] = {}
    polyp_class: dict[str, tuple[str, int]] = {}
    for ln, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        where = f"{path}:{ln}"
        try:
            frame = int(row["frame"])
        except ValueError:
            raise DataError(f"{where}: frame {row['frame']!r} is not an integer") from None
        if frame < 0 or frame in rows:
            raise DataError(f"{where}: frame {frame} is " + ("negative" if frame < 0 else "listed twice"))
        cls, sub = row["class"], row.get("subclass", "")
        pid = canonical_polyp_id(row["polyp_id"])
        has = row.get("has_polyp", "").lower()
        if cls == "" and has in HAS_POLYP_YES:
            raise DataError(f"{where}: a polyp frame (has_polyp {row['has_polyp']}) without a class; "
                            "give its class, or leave the frame out of the video")
        if cls == "" or cls.lower() in NO_POLYP_NAMES or has in HAS_POLYP_NO:
            rows[frame] = FrameLabel(BACKGROUND_NAME, _check_name(sub, "subclass", where) if sub else BACKGROUND_NAME, "")
            continue
        _check_name(cls, "class", where)
        if classes is not None and cls not in classes:
            raise DataError(f"{where}: unknown class {cls!r}; --classes allows {', '.join(classes)} "
                            f"(and {BACKGROUND_NAME} / empty for frames with no polyp)")
        if pid is None:
            raise DataError(f"{where}: a {cls} frame without a polyp_id; give every polyp frame its polyp's id")
        _check_name(pid, "polyp_id", where)
        first = polyp_class.setdefault(pid, (cls, ln))
        if first[0] != cls:
            raise DataError(f"{where}: polyp {pid} is {cls} here but {first[0]} on line {first[1]}; "
                            "one polyp has one class")
        rows[frame] = FrameLabel(cls, _check_name(sub, "subclass", where) if sub else cls, pid)
    if not rows:
        raise DataError(f"labels file {path} has no rows")
    n = max(rows) + 1
    if len(rows) != n:
        gap = next(i for i in range(n) if i not in rows)
        raise DataError(f"labels file {path} has no row for frame {gap}; give every frame of the video a row")
    return [rows[i] for i in range(n)]


def frame_groups(stem: str, labels: list[FrameLabel]) -> list[str]:
    """Group of each frame: the polyp, or the stretch of polyp-free frames it lies in."""
    out, stretch, prev_bg = [], -1, False
    for lab in labels:
        bg = lab.cls == BACKGROUND_NAME
        if bg and not prev_bg:
            stretch += 1
        out.append(f"{stem}/nopolyp{stretch}" if bg else f"{stem}/polyp{lab.polyp}")
        prev_bg = bg
    return out


def _content_box(frames: list[np.ndarray]) -> tuple[int, int, int, int] | None:
    """Median content area (x, y, w, h) of a few full-size RGB frames (the stream's detector)."""
    from edgeskd.stream.crop import detect_content_area

    boxes = []
    for f in frames:
        H, W = f.shape[:2]
        step = max(1.0, max(W, H) / 192)
        rows = np.minimum(((np.arange(int(round(H / step))) + 0.5) * step).astype(np.intp), H - 1)
        cols = np.minimum(((np.arange(int(round(W / step))) + 0.5) * step).astype(np.intp), W - 1)
        box = detect_content_area(f[rows][:, cols])
        if box is not None:
            x, y, w, h = box
            boxes.append((int(x * step), int(y * step), int(round(w * step)), int(round(h * step))))
    if not boxes:
        return None
    x, y, w, h = (int(v) for v in np.median(np.array(boxes), 0))
    return x, y, w, h


def _decode(video: Path):
    """Iterator of RGB uint8 frames; a video that does not decode is a one-line VideoError."""
    try:
        import av
    except ImportError:
        raise UsageError("reading video needs PyAV: pip install av") from None
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise VideoError(f"{video} has no video stream")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except VideoError:
        raise
    except Exception as e:  # av.error.* and friends: one line, no library text dump
        text = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise VideoError(f"cannot decode {video}: {text} (is it a complete video file?)") from None


CROP_LOOKAHEAD = 15   # frames the content area is found on (their median box)
CROP_MAX_SCAN = 1800  # frames looked at for a lit field at most (a minute at 30 fps of dark lead-in)


def find_content_box(video: Path) -> tuple[tuple[int, int, int, int] | None, int]:
    """(median content area of the first ``CROP_LOOKAHEAD`` frames that show a lit field, frames
    looked at): dark frames at the start (the scope not yet lit, a black lead-in) are skipped, so
    they do not turn cropping off for the whole video. (None, n) when no field is found."""
    boxes, n = [], 0
    frames = _decode(video)
    try:
        for rgb in itertools.islice(frames, CROP_MAX_SCAN):
            n += 1
            b = _content_box([rgb])
            if b is not None:
                boxes.append(b)
                if len(boxes) >= CROP_LOOKAHEAD:
                    break
    finally:
        frames.close()   # closes the container now, not at garbage collection
    if not boxes:
        return None, n
    x, y, w, h = (int(v) for v in np.median(np.array(boxes), 0))
    return (x, y, w, h), n


def _frames_of(video: Path, box: tuple[int, int, int, int] | None):
    """(index, RGB frame) of every frame, cropped to ``box`` (x, y, w, h) when given."""
    for i, rgb in enumerate(_decode(video)):
        if box is not None:
            x, y, w, h = box
            rgb = rgb[y:y + h, x:x + w]
        yield i, rgb


def _class_order(found: set[str], positive: str | None = None) -> tuple[list[str], dict, str]:
    """Classes (the "no polyp" class last), what the sidecar says beyond the order (the positive
    class, the background class) and why that class is positive."""
    from edgeskd.data import synthetic as sy

    polyp = found - {BACKGROUND_NAME}
    extra: dict = {}
    if polyp <= set(sy.POLYP_CLASS_NAMES):   # the synthetic video's names: its class order
        order = [c for c in sy.POLYP_CLASS_NAMES if c in polyp]
    else:
        order = sorted(polyp)
    pos = order[positive_class_index(order, None, positive)]   # the rule train and info use
    why = ("--positive" if positive is not None else
           "its name; --positive CLASS to choose another" if [c for c in order if c.lower() in POSITIVE_NAMES] == [pos] else
           "the last class by name; --positive CLASS to choose another")
    extra["positive_class"] = pos
    if BACKGROUND_NAME in found:
        order.append(BACKGROUND_NAME)
        extra["background_class"] = BACKGROUND_NAME
    return order, extra, why


def _subclass_order(classes: list[str], pairs: set[tuple[str, str]]) -> dict:
    """Sidecar subclass order: the synthetic set's order for its names, else sorted within a class."""
    from edgeskd.data import synthetic as sy

    rank = {n: i for i, n in enumerate(sy.SUBCLASS_NAMES)}
    names, owners = [], []
    for ci, c in enumerate(classes):
        subs = sorted({s for cc, s in pairs if cc == c}, key=lambda s: (rank.get(s, len(rank)), s))
        names += subs
        owners += [ci] * len(subs)
    if len(set(names)) != len(names):   # a name under two classes: let the reader qualify it
        return {}
    return {"subclass_names": names, "subclass_to_class": owners}


def _label_notes(videos: Sequence[Path], labels: Sequence[Path], all_labels: list[list[FrameLabel]]) -> list[str]:
    """What the user should know about their labels before training on them: a polyp name (not a
    number) used in two videos (the same polyp filmed twice would be two groups, and could land in
    train and test), and labels files with and without a subclass column (the class then stands in
    as the subtype of the frames without one)."""
    notes = []
    where: dict[str, list[str]] = {}
    for v, labs in zip(videos, all_labels):
        for pid in sorted({lab.polyp for lab in labs if lab.polyp and not lab.polyp.isdigit()}):
            where.setdefault(pid, []).append(Path(v).stem)
    shared = {pid: vs for pid, vs in where.items() if len(vs) > 1}
    if shared:
        pid, vs = next(iter(shared.items()))
        notes.append(f"{len(shared)} polyp id(s) appear in more than one video (e.g. {pid!r} in {', '.join(vs)}); groups "
                     "are per video, so if they are the same polyp, give their rows one group in the manifest's "
                     "group column, or train and test may both hold it")
    with_sub = [Path(p).name for p in labels if "subclass" in _header(Path(p))]
    if with_sub and len(with_sub) < len(labels):
        notes.append(f"{len(labels) - len(with_sub)} labels file(s) have no subclass column: their frames take the "
                     "class as the subtype, beside the subtypes of the others")
    return notes


def _header(path: Path) -> list[str]:
    first = path.read_text(encoding="utf-8-sig").splitlines()[:1]
    return [c.strip().lower() for c in first[0].split(",")] if first else []


def write_frames(videos: Sequence[Path], labels: Sequence[Path], out: Path, *, every: int = 1,
                 split: str | None = None, classes: Sequence[str] | None = None, positive: str | None = None,
                 crop: bool = True, overwrite: bool = False, progress=None) -> dict:
    """Decode ``videos``, keep every ``every``-th frame, write them with their labels as a grouped
    manifest under ``out``. Returns a summary (frames, per class, groups)."""
    from edgeskd.data.writers import _csv_text, _png_bytes, atomic_dir, check_output_dir

    if len(videos) != len(labels):
        csvs = [str(v) for v in videos if str(v).lower().endswith(".csv")]
        if csvs:
            raise UsageError(f"{csvs[0]} is a labels file read as a video: give --labels once per video, in the "
                             "videos' order (--labels A.csv --labels B.csv)")
        raise UsageError(f"{len(videos)} video(s) but {len(labels)} --labels file(s); give --labels once per video, "
                         "in the videos' order (--labels A.csv --labels B.csv)")
    if every < 1:
        raise UsageError(f"--every must be >= 1, got {every}")
    stems = [Path(v).stem for v in videos]
    if len(set(stems)) != len(stems):
        raise UsageError("two videos have the same file name stem; groups are named by it — rename one")
    for v in videos:
        if not Path(v).is_file():
            raise VideoError(f"video file {v} not found; check the path")
    check_output_dir(out, overwrite=overwrite)
    all_labels = [read_video_labels(Path(p), classes=classes) for p in labels]   # every input checked first
    named = sorted({lab.cls for labs in all_labels for lab in labs} - {BACKGROUND_NAME})
    by_case: dict[str, str] = {}
    for c in named:   # the stream matches class names in any case; a training set must not split them
        other = by_case.setdefault(c.lower(), c)
        if other != c:
            raise DataError(f"the labels name one class two ways, {other!r} and {c!r}; write it one way in "
                            "every labels file")
    if positive is not None and positive not in named:
        raise UsageError(f"--positive {positive!r} is not a polyp class of the labels ({', '.join(named) or 'none'})")
    rows: list[list[str]] = []
    found: set[str] = set()
    notes = _label_notes(videos, labels, all_labels)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for video, stem, labs in zip(videos, stems, all_labels):
            groups = frame_groups(stem, labs)
            (tmp / "images" / stem).mkdir(parents=True)
            n = 0
            box, scanned = find_content_box(Path(video)) if crop else (None, 0)
            if crop and box is None and scanned:
                notes.append(f"{video}: no lit field in its first {scanned} frames; frames written whole (--crop none "
                             "says so on purpose)")
            for i, img in _frames_of(Path(video), box):
                n = i + 1
                if i >= len(labs) or i % every:
                    continue
                rel = f"images/{stem}/{i:06d}.png"
                (tmp / rel).write_bytes(_png_bytes(img))
                rows.append([rel, labs[i].cls, labs[i].sub, groups[i]] + ([split] if split else []))
                found.add(labs[i].cls)
                if progress is not None:
                    progress(video, i, len(labs))
            if n == 0:
                raise VideoError(f"{video}: no frames decoded; is it a video?")
            if n != len(labs):
                raise DataError(f"{video} has {n} frames but its labels file has {len(labs)} rows; "
                                "give the labels of this video (one row per frame)")
        if len(found - {BACKGROUND_NAME}) == 0:
            raise DataError("no polyp frames among the kept frames; a training set needs polyp classes")
        if positive is not None and positive not in found:
            raise DataError(f"--positive {positive!r} has no frame among the kept frames (every {every}-th); "
                            "lower --every")
        order, extra, why = _class_order(found, positive)
        extra.update(_subclass_order(order, {(r[1], r[2]) for r in rows}))
        (tmp / "manifest.csv").write_text(_csv_text([list(HEADER) + (["split"] if split else [])] + rows),
                                          encoding="utf-8")
        side = {"edgeskd_dataset": SIDECAR_VERSION, "format": "manifest", "class_names": order, **extra,
                "source": {"videos": [str(v) for v in videos], "every": every}}
        (tmp / SIDECAR).write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
    counts = {c: sum(r[1] == c for r in rows) for c in order}
    if len(order) - (BACKGROUND_NAME in order) < 2:
        notes.append(f"only one polyp class ({order[0]}) among the kept frames; a classifier needs two "
                     "(add videos with the other class)")
    return {"out": str(out), "frames": len(rows), "videos": len(videos), "per_class": counts,
            "groups": len({r[3] for r in rows}), "manifest": str(out / "manifest.csv"),
            "positive_class": extra["positive_class"], "positive_reason": why, "notes": notes}

