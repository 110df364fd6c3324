"""MHIST: ``ROOT/annotations.csv`` + ``ROOT/images/<Image Name>``; subclasses from vote bins.

Header (exact)::

    Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition

Labels ``HP`` / ``SSA``, votes 0–7 (votes ≥ 4 ⇔ SSA), partition ``train`` / ``test``. Subclasses
are vote bins, ordered by vote so blocks are contiguous; default HP {0},{1,2},{3} and SSA
{4},{5,6},{7} (``--vote-bins "0|1,2|3|4|5,6|7"``). A row whose votes disagree with its majority
label keeps its label; its subclass is the label's bin nearest to its votes, and the row is
reported in ``info["vote_disagreements"]``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeskd.data.base import LabeledSet
from edgeskd.data.records import check_unique, read_sidecar, safe_relative
from edgeskd.errors import DataError, UsageError

MHIST_COLUMNS = (
    "Image Name",
    "Majority Vote Label",
    "Number of Annotators who Selected SSA (Out of 7)",
    "Partition",
)
MHIST_HEADER = ",".join(MHIST_COLUMNS)
MHIST_LABELS = ("HP", "SSA")
N_ANNOTATORS = 7
DEFAULT_VOTE_BINS: tuple[tuple[int, ...], ...] = ((0,), (1, 2), (3,), (4,), (5, 6), (7,))
ANNOTATIONS = "annotations.csv"

VoteBins = tuple[tuple[int, ...], ...]


def parse_vote_bins(spec: str | Sequence[Sequence[int]] | None, n_annotators: int = N_ANNOTATORS) -> VoteBins:
    """``"0|1,2|3|4|5,6|7"`` (ranges ``1-2`` allowed) or a list of lists → validated bins.

    Bins must cover 0..n exactly once, in increasing order, each inside one class (≤ n/2 for the
    negative class, > n/2 for the positive), at least one bin per class.
    """
    if spec is None:
        return DEFAULT_VOTE_BINS
    hint = 'give bins like "0|1,2|3|4|5,6|7"'
    if isinstance(spec, str):
        bins: list[tuple[int, ...]] = []
        for group in spec.split("|"):
            vals: list[int] = []
            for tok in group.split(","):
                tok = tok.strip()
                try:
                    if "-" in tok[1:]:
                        a, b = tok.split("-", 1)
                        vals += list(range(int(a), int(b) + 1))
                    else:
                        vals.append(int(tok))
                except ValueError:
                    raise UsageError(f"--vote-bins {spec!r}: {tok!r} is not a vote count; {hint}") from None
            bins.append(tuple(vals))
    else:
        try:
            bins = [tuple(int(v) for v in b) for b in spec]
        except (TypeError, ValueError):
            raise UsageError(f"vote bins {spec!r} are not lists of integers; {hint}") from None
    flat = [v for b in bins for v in b]
    if any(len(b) == 0 for b in bins):
        raise UsageError(f"--vote-bins {spec!r}: empty bin; {hint}")
    if sorted(flat) != list(range(n_annotators + 1)) or flat != sorted(flat):
        raise UsageError(f"--vote-bins {spec!r} must cover the vote counts 0..{n_annotators} exactly once, "
                         f"in increasing order; {hint}")
    half = n_annotators / 2
    for b in bins:
        if min(b) < half < max(b):
            raise UsageError(f"--vote-bins {spec!r}: bin {','.join(map(str, b))} mixes votes of both classes "
                             f"(majority flips above {int(half)}); {hint}")
    if not any(max(b) < half for b in bins) or not any(min(b) > half for b in bins):
        raise UsageError(f"--vote-bins {spec!r}: each class needs at least one bin; {hint}")
    return tuple(bins)


def vote_bin_names(bins: VoteBins, n_annotators: int = N_ANNOTATORS) -> tuple[list[str], list[int]]:
    names, s2c = [], []
    for b in bins:
        cls = int(min(b) > n_annotators / 2)
        rng = str(b[0]) if len(b) == 1 else (f"{b[0]}-{b[-1]}" if list(b) == list(range(b[0], b[-1] + 1))
                                             else ",".join(map(str, b)))
        names.append(f"{MHIST_LABELS[cls]}_v{rng}")
        s2c.append(cls)
    return names, s2c


def find_annotations(path: Path) -> Path:
    return path / ANNOTATIONS if path.is_dir() else path


def load_mhist(path: Path, *, vote_bins: str | Sequence[Sequence[int]] | None = None) -> LabeledSet:
    csv_path = find_annotations(path)
    root = csv_path.parent
    where = str(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path} not found; an MHIST root holds {ANNOTATIONS} and images/")
    bins = parse_vote_bins(vote_bins)
    sub_names, s2c = vote_bin_names(bins)
    bin_of = {v: i for i, b in enumerate(bins) for v in b}
    images_dir = root / "images"

    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {csv_path}: {e}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{where}: empty file; expected the header {MHIST_HEADER!r} and one row per image")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in MHIST_COLUMNS if c not in header]
    if missing:
        extra = [h for h in header if h not in MHIST_COLUMNS]
        raise DataError(f"{where}: column(s) {', '.join(repr(m) for m in missing)} missing"
                        + (f" (found {', '.join(repr(e) for e in extra)})" if extra else "")
                        + f"; the header must be exactly {MHIST_HEADER!r}")
    col = {c: header.index(c) for c in MHIST_COLUMNS}
    body = rows[1:]
    if not body:
        raise DataError(f"{where}: no rows; expected one row per image")

    names, labels, votes, parts, subs, disagree = [], [], [], [], [], []
    for ln, r in enumerate(body, start=2):
        if len(r) < len(header):
            raise DataError(f"{where}:{ln}: {len(r)} fields, expected {len(header)}")
        name = r[col["Image Name"]].strip()
        lab = r[col["Majority Vote Label"]].strip()
        vs = r[col["Number of Annotators who Selected SSA (Out of 7)"]].strip()
        part = r[col["Partition"]].strip().lower()
        if "/" in name or "\\" in name:
            raise DataError(f"{where}:{ln}: image name {name!r} has a path separator; MHIST image names are "
                            f"plain file names inside {images_dir}")
        safe_relative(name, images_dir, what="image name", where=f"{where}:{ln}")
        if lab not in MHIST_LABELS:
            raise DataError(f"{where}:{ln}: unknown label {lab!r}; MHIST labels are HP or SSA")
        try:
            v = int(vs)
        except ValueError:
            raise DataError(f"{where}:{ln}: vote count {vs!r} is not an integer; give 0-{N_ANNOTATORS}") from None
        if not 0 <= v <= N_ANNOTATORS:
            raise DataError(f"{where}:{ln}: vote count {v} outside 0-{N_ANNOTATORS}")
        if part not in ("train", "test", "val"):
            raise DataError(f"{where}:{ln}: unknown partition {part!r}; use train or test")
        c = MHIST_LABELS.index(lab)
        b = bin_of[v]
        if s2c[b] != c:
            disagree.append({"image": name, "label": lab, "votes": v, "line": ln})
            own = [i for i, cc in enumerate(s2c) if cc == c]
            b = own[-1] if c == 0 else own[0]  # the label's bin nearest to the votes
        names.append(name)
        labels.append(c)
        votes.append(v)
        parts.append(part)
        subs.append(b)
    check_unique(names, what="image name", where=where)
    paths = [images_dir / n for n in names]
    missing_files = [n for n, p in zip(names, paths) if not p.is_file()]
    if missing_files:
        raise DataError(f"{where}: {len(missing_files)} image(s) listed but not found in {images_dir}, "
                        f"e.g. {missing_files[0]!r}; copy them there or fix the names")

    sidecar = read_sidecar(root)
    info: dict = {"warnings": [], "vote_bins": [list(b) for b in bins], "vote_disagreements": disagree,
                  "subclass_definition": "MHIST vote bins " + "|".join(",".join(map(str, b)) for b in bins),
                  "positive_class": "SSA"}
    if disagree:
        ex = ", ".join(f"{d['image']} ({d['label']}, {d['votes']} votes)" for d in disagree[:3])
        info["warnings"].append(
            f"{len(disagree)} row(s) of {csv_path.name} have votes that disagree with the majority label, "
            f"e.g. {ex}{' …' if len(disagree) > 3 else ''}; the label is kept, the subclass is the label's "
            "nearest vote bin")
    for key in ("generator", "label_noise_rate"):
        if key in sidecar:
            info[key] = sidecar[key]
    return LabeledSet(
        name=root.name or str(root), format="mhist", class_names=list(MHIST_LABELS),
        subclass_names=sub_names, subclass_to_class=s2c, labels=np.array(labels), subclasses=np.array(subs),
        splits=np.array(parts, dtype=object), paths=paths, votes=np.array(votes), root=root,
        n_annotators=N_ANNOTATORS, info=info,
    )


def is_mhist_csv(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False
    first = [h.strip() for h in first]
    return "Image Name" in first or "Majority Vote Label" in first or "Partition" in first
