"""Write a LabeledSet as a folder tree, an MHIST root or a CSV manifest — atomically: everything
goes into a temporary directory next to OUT, which is renamed to OUT only when complete."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeskd.data.base import LabeledSet
from edgeskd.data.manifest import MANIFEST
from edgeskd.data.mhist import ANNOTATIONS, MHIST_COLUMNS, MHIST_LABELS, N_ANNOTATORS
from edgeskd.data.records import SIDECAR, sidecar_for
from edgeskd.errors import DataError, UsageError
from edgeskd.utils.io import ensure_writable_dir

WRITE_FORMATS = ("folder", "mhist", "manifest")


def image_names(ls: LabeledSet) -> list[str]:
    """File name of each sample: the source file's name, or ``synth_00000.png``… for arrays."""
    if ls.paths is not None:
        return [Path(p).name for p in ls.paths]
    width = max(5, len(str(len(ls) - 1)))
    return [f"synth_{i:0{width}d}.png" for i in range(len(ls))]


def check_output_dir(out: str | Path, *, overwrite: bool) -> Path:
    """UsageError if ``out`` is a file, or a non-empty directory and not ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --overwrite to replace it, or choose another path")
    if overwrite and out.is_dir():
        here, target = Path.cwd().resolve(), out.resolve()
        if target == here or target in here.parents or target == Path.home().resolve():
            raise UsageError(f"--overwrite would replace {target} (the current folder, one above it, or home) "
                             "with the output; give --out a folder of its own")
    from edgeskd.utils.io import probe_writable_dir

    probe_writable_dir(out.parent if str(out.parent) else ".")   # before any rendering
    return out


@contextlib.contextmanager
def atomic_dir(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``out``. Refuses a non-empty ``out``
    unless ``overwrite``; on failure ``out`` is untouched and the temporary directory removed."""
    out = check_output_dir(out, overwrite=overwrite)
    parent = ensure_writable_dir(out.parent if str(out.parent) else ".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        from edgeskd.utils.io import _UMASK

        os.chmod(tmp, 0o777 & ~_UMASK)   # mkdtemp makes 0700: the data set gets the usual permissions
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _write_images(ls: LabeledSet, targets: list[Path]) -> None:
    for d in sorted({t.parent for t in targets}):
        d.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        if ls.images is None and ls.paths is not None and Path(ls.paths[i]).suffix.lower() == targets[i].suffix.lower():
            shutil.copyfile(ls.paths[i], targets[i])  # same format: copy the bytes
        else:
            targets[i].write_bytes(_png_bytes(ls.load_image(i)))

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as ex:  # PIL's encoder releases the GIL
        list(ex.map(one, range(len(ls))))


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _polyp_frames_only(ls: LabeledSet) -> LabeledSet:
    """``ls`` without its "no polyp" class (its frames, the class and its subclasses)."""
    bg = ls.background_class
    keep_sub = [s for s, c in enumerate(ls.subclass_to_class) if c != bg]
    sub_map = np.full(ls.num_subclasses, -1, np.int64)
    sub_map[keep_sub] = np.arange(len(keep_sub))
    cls_map = np.array([c - (bg is not None and c > bg) for c in range(ls.num_classes)], np.int64)
    out = ls.subset(ls.labels != bg)
    out.info = {k: v for k, v in out.info.items() if k != "background_class"}
    out.labels, out.subclasses = cls_map[out.labels], sub_map[out.subclasses]
    out.class_names = [c for i, c in enumerate(ls.class_names) if i != bg]
    out.subclass_names = [ls.subclass_names[s] for s in keep_sub]
    out.subclass_to_class = [int(cls_map[ls.subclass_to_class[s]]) for s in keep_sub]
    out.background_class = None
    return out


def write_dataset(ls: LabeledSet, out: str | Path, format: str = "folder", *, overwrite: bool = False) -> Path:
    """Write ``ls`` to ``out`` in ``format`` (folder | mhist | manifest), with a dataset.json
    sidecar (class/subclass order, positive class, "no polyp" class, synthetic generator facts).
    Images are PNG (lossless) unless the source file can be copied as is. Groups go to the
    manifest's ``group`` column (folder: the sidecar). MHIST holds the two polyp classes only:
    frames of the "no polyp" class are left out."""
    fmt = getattr(format, "value", format)
    if fmt not in WRITE_FORMATS:
        raise UsageError(f"cannot write format {fmt!r}; choose one of {', '.join(WRITE_FORMATS)}")
    if fmt == "mhist" and ls.background_class is not None:
        ls = _polyp_frames_only(ls)
    if len(ls) == 0:
        raise DataError("nothing to write: the data set is empty")
    names = image_names(ls)
    if len(set(names)) != len(names):
        raise DataError("image names are not unique; cannot write them into one data set")
    if ls.paths is None:
        names = [n if n.lower().endswith(".png") else n + ".png" for n in names]
    splits = [str(s) for s in ls.splits]
    votes = ls.votes
    out = Path(out)

    if fmt == "mhist":
        if ls.num_classes != 2:
            raise DataError(f"MHIST holds 2 classes (HP, SSA); this set has {ls.num_classes}")
        if votes is None or (votes < 0).any():
            raise DataError("MHIST needs annotator votes (0-7) for every image; this set has none or some unknown")
        if ls.n_annotators != N_ANNOTATORS:
            raise DataError(f"MHIST assumes {N_ANNOTATORS} annotators; this set has {ls.n_annotators}")

    with atomic_dir(out, overwrite=overwrite) as tmp:
        side = sidecar_for(ls, fmt)
        if fmt == "folder":
            targets = [tmp / splits[i] / ls.class_names[ls.labels[i]] / ls.subclass_names[ls.subclasses[i]] / names[i]
                       for i in range(len(ls))]
            # Empty subclasses still get a folder so the order survives a round trip.
            for sp in sorted(set(splits)):
                for s, c in zip(ls.subclass_names, ls.subclass_to_class):
                    (tmp / sp / ls.class_names[c] / s).mkdir(parents=True, exist_ok=True)
            _write_images(ls, targets)
            if votes is not None:  # a folder tree has no place for votes: keep them in the sidecar
                side["votes"] = {n: int(v) for n, v in zip(names, votes) if v >= 0}
            if ls.groups is not None:  # ... nor for groups
                side["groups"] = {n: str(g) for n, g in zip(names, ls.groups)}
        elif fmt == "manifest":
            rels = [f"images/{n}" for n in names]
            _write_images(ls, [tmp / r for r in rels])
            rows = [["path", "class", "subclass", "split"] + (["votes"] if votes is not None else [])
                    + (["group"] if ls.groups is not None else [])]
            for i in range(len(ls)):
                row = [rels[i], ls.class_names[ls.labels[i]], ls.subclass_names[ls.subclasses[i]], splits[i]]
                if votes is not None:
                    row.append("" if votes[i] < 0 else str(int(votes[i])))
                if ls.groups is not None:
                    row.append(str(ls.groups[i]))
                rows.append(row)
            (tmp / MANIFEST).write_text(_csv_text(rows), encoding="utf-8")
        else:  # mhist
            _write_images(ls, [tmp / "images" / n for n in names])
            rows = [list(MHIST_COLUMNS)]
            for i in range(len(ls)):
                part = "test" if splits[i] == "test" else "train"  # MHIST has no val: it is carved on load
                rows.append([names[i], MHIST_LABELS[int(ls.labels[i])], str(int(votes[i])), part])  # type: ignore[index]
            (tmp / ANNOTATIONS).write_text(_csv_text(rows), encoding="utf-8")
            side["class_names_written_as"] = dict(zip(ls.class_names, MHIST_LABELS))
        import json

        (tmp / SIDECAR).write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
    return out
