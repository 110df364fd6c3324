"""CSV manifest: ``path,class,subclass[,split][,votes][,group]`` with paths relative to the CSV.

Comma or semicolon separated (HyperKvasir's own files use ``;``). ``split`` is train/val/test for
every row or empty for every row (then a split is made: by group when there are groups, else
stratified by subclass); ``votes`` is an integer 0..7 (positive-class annotator votes) or empty
(unknown). ``group`` (or the column named by ``group_by``, e.g. ``patient``) is each image's
group — video + polyp id, patient — which splits keep whole.
"""

from __future__ import annotations

import csv
from pathlib import Path

from edgeskd.data.base import LabeledSet
from edgeskd.data.records import Record, build_labeled_set, check_unique, normalise_split, read_sidecar, safe_relative
from edgeskd.errors import DataError

REQUIRED = ("path", "class", "subclass")
OPTIONAL = ("split", "votes", "group")
GROUP = "group"
MANIFEST = "manifest.csv"
N_ANNOTATORS = 7


def _read_rows(csv_path: Path) -> list[list[str]]:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {csv_path}: {e}") from None
    first = text.splitlines()[0] if text.strip() else ""
    delim = ";" if first.count(";") > first.count(",") else ","
    return [r for r in csv.reader(text.splitlines(), delimiter=delim) if any(c.strip() for c in r)]


def manifest_header(csv_path: Path) -> list[str]:
    try:
        rows = _read_rows(csv_path)
    except DataError:
        return []
    return [h.strip().lower() for h in rows[0]] if rows else []


def load_manifest(csv_path: Path, *, group_by: str | None = None) -> LabeledSet:
    """The manifest at ``csv_path`` (a CSV, or a directory holding ``manifest.csv``). ``group_by``
    names the group column (default: ``group`` when present)."""
    if csv_path.is_dir():
        csv_path = csv_path / MANIFEST
    where = str(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path} not found; a manifest is a CSV with columns {','.join(REQUIRED)}[,split][,votes]")
    root = csv_path.parent
    rows = _read_rows(csv_path)
    if not rows:
        raise DataError(f"{where}: empty file; expected the header {','.join(REQUIRED)}[,split][,votes]")
    header = [h.strip().lower() for h in rows[0]]
    group_col = group_by.strip().lower() if group_by is not None else None
    if group_col is not None and group_col not in header:
        raise DataError(f"{where}: --group-by {group_by!r}: no such column; the columns are {','.join(header)}")
    if group_col is None and GROUP in header:
        group_col = GROUP
    missing = [c for c in REQUIRED if c not in header]
    unknown = [h for h in header if h not in REQUIRED + OPTIONAL and h != group_col]
    if missing or unknown:
        msg = []
        if missing:
            msg.append(f"column(s) {', '.join(missing)} missing")
        if unknown:
            msg.append(f"unknown column(s) {', '.join(repr(u) for u in unknown)}")
        raise DataError(f"{where}: {'; '.join(msg)}; the header is {','.join(REQUIRED)}[,split][,votes][,group]"
                        " (another group column: --group-by NAME)")
    if len(set(header)) != len(header):
        raise DataError(f"{where}: repeated column in header {','.join(header)}")
    col = {h: i for i, h in enumerate(header)}
    body = rows[1:]
    if not body:
        raise DataError(f"{where}: no rows; expected one row per image")

    records: list[Record] = []
    rels: list[str] = []
    for ln, r in enumerate(body, start=2):
        if len(r) < len(header):
            raise DataError(f"{where}:{ln}: {len(r)} fields, expected {len(header)}")
        rel = r[col["path"]].strip()
        cls, sub = r[col["class"]].strip(), r[col["subclass"]].strip()
        if not cls or not sub:
            raise DataError(f"{where}:{ln}: empty class or subclass; every row needs both")
        p = safe_relative(rel, root, what="path", where=f"{where}:{ln}")
        split = normalise_split(r[col["split"]], where=f"{where}:{ln}") if "split" in col else ""
        votes = -1
        if "votes" in col and r[col["votes"]].strip():
            vs = r[col["votes"]].strip()
            try:
                votes = int(vs)
            except ValueError:
                raise DataError(f"{where}:{ln}: votes {vs!r} is not an integer; give 0-{N_ANNOTATORS} or leave empty") from None
            if not 0 <= votes <= N_ANNOTATORS:
                raise DataError(f"{where}:{ln}: votes {votes} outside 0-{N_ANNOTATORS}")
        group = r[col[group_col]].strip() if group_col is not None else ""
        records.append(Record(p, cls, sub, split, votes, group))
        rels.append(str(Path(rel.replace("\\", "/"))))
    check_unique(rels, what="path", where=where)
    # the same file listed twice (by different spellings); equal file names in different folders
    # (per-patient folders of 0001.png ...) are fine
    check_unique([str(r.path.resolve()) for r in records], what="image file", where=where)
    given = [r.split != "" for r in records]
    if any(given) and not all(given):
        ln = given.index(False) + 2
        raise DataError(f"{where}:{ln}: empty split while other rows have one; fill every split or none")
    missing_files = [rel for rel, r in zip(rels, records) if not r.path.is_file()]
    if missing_files:
        raise DataError(f"{where}: {len(missing_files)} listed image(s) not found relative to {root}, "
                        f"e.g. {missing_files[0]!r}; fix the paths (they are relative to the CSV)")
    return build_labeled_set(records, name=root.name or str(root), fmt="manifest", root=root, where=where,
                             sidecar=read_sidecar(root))
