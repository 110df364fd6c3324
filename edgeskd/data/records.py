"""Shared pieces of the file formats: safe relative paths, the dataset.json sidecar, and building a
LabeledSet from (path, class, subclass, split, votes, group) records with a stable class/subclass order.

The "no polyp" class (frames with no lesion in view) is the class named in the sidecar's
``"background_class"``, else a class literally named ``no_polyp`` (``BACKGROUND_NAME``); without
a sidecar class order it is put last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Sequence

import numpy as np

from edgeskd.data.base import SPLITS, LabeledSet
from edgeskd.errors import DataError

SIDECAR = "dataset.json"
SIDECAR_VERSION = 1
BACKGROUND_NAME = "no_polyp"
NO_POLYP_NAMES = ("no_polyp", "no polyp", "no-polyp", "nopolyp")   # what a labels file may call a polyp-free frame
HAS_POLYP_YES, HAS_POLYP_NO = ("1", "true", "yes"), ("0", "false", "no")   # a labels file's has_polyp values


POSITIVE_NAMES = ("adenoma", "adenomatous", "ssa", "ssl", "sessile_serrated", "neoplastic")   # positive by name


def positive_class_index(class_names: list[str], background: int | None, chosen: object = None) -> int:
    """The positive class (F1, AUC, NPV): the data set's choice (``positive_class`` in its sidecar:
    a name or an index), else the one class named like a lesion to resect (``POSITIVE_NAMES``,
    any case: adenoma, SSA, SSL), else the last class that is not the "no polyp" class. One rule
    for `frames`, `train`, `info` and `bench`."""
    names = list(class_names)
    if isinstance(chosen, str) and chosen in names:
        return names.index(chosen)
    if isinstance(chosen, int) and not isinstance(chosen, bool) and 0 <= chosen < len(names) and chosen != background:
        return chosen
    polyp = [i for i in range(len(names)) if i != background]
    named = [i for i in polyp if names[i].lower() in POSITIVE_NAMES]
    return named[0] if len(named) == 1 else polyp[-1]


def safe_relative(name: str, root: Path, *, what: str, where: str) -> Path:
    """``root / name`` if ``name`` is a relative path that stays inside ``root``; else DataError.

    Rejects absolute paths (POSIX or Windows drive/UNC), ``..`` components, empty names, and
    symlinks that resolve outside the root.
    """
    if not name or not name.strip():
        raise DataError(f"{where}: empty {what}; give a file name relative to {root}")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise DataError(f"{where}: {what} {name!r} is an absolute path; use a path relative to {root}")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise DataError(f"{where}: {what} {name!r} escapes the data set root {root} ('..'); "
                        "keep images inside the root")
    p = root / Path(*parts)
    try:
        inside = p.resolve().is_relative_to(root.resolve())
    except OSError:
        inside = False
    if not inside:
        raise DataError(f"{where}: {what} {name!r} resolves outside the data set root {root} (symlink?); "
                        "keep images inside the root")
    return p


def check_unique(names: Sequence[str], *, what: str, where: str) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise DataError(f"{where}: duplicate {what} {n!r} (entries {seen[n] + 1} and {i + 1}); "
                            f"each image must appear once — remove or rename the duplicate")
        seen[n] = i


# ----------------------------------------------------------------------------------------------
# Sidecar: optional dataset.json next to the data (class order, positive class, generator facts)
# ----------------------------------------------------------------------------------------------
def read_sidecar(root: Path) -> dict[str, Any]:
    p = root / SIDECAR
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not valid JSON ({e}); fix or delete it") from None
    if not isinstance(d, dict):
        raise DataError(f"{p}: expected a JSON object; fix or delete it")
    for key in ("class_names", "subclass_names"):
        v = d.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise DataError(f"{p}: {key} must be a list of strings; fix or delete it")
    bg = d.get("background_class")
    if bg is not None and not isinstance(bg, str):
        raise DataError(f"{p}: background_class must be a class name (e.g. \"no_polyp\"); fix or delete it")
    s2c = d.get("subclass_to_class")
    if s2c is not None and (not isinstance(s2c, list) or not all(isinstance(x, int) for x in s2c)):
        raise DataError(f"{p}: subclass_to_class must be a list of integers; fix or delete it")
    return d


def sidecar_for(ls: LabeledSet, fmt: str) -> dict[str, Any]:
    """What a writer stores next to the data: order of names and, for synthetic sets, the facts
    that cannot be recovered from the files (generator settings, the true label-noise rate)."""
    d: dict[str, Any] = {
        "edgeskd_dataset": SIDECAR_VERSION,
        "format": fmt,
        "class_names": list(ls.class_names),
        "subclass_names": list(ls.subclass_names),
        "subclass_to_class": [int(v) for v in ls.subclass_to_class],
    }
    for key in ("positive_class", "subclass_definition", "generator", "label_noise_rate"):
        if key in ls.info:
            d[key] = ls.info[key]
    if ls.background_class is not None:
        d["background_class"] = ls.class_names[ls.background_class]
    return d


# ----------------------------------------------------------------------------------------------
# Records → LabeledSet
# ----------------------------------------------------------------------------------------------
@dataclass
class Record:
    path: Path
    cls: str
    sub: str
    split: str = ""      # "" = not given
    votes: int = -1      # -1 = unknown
    group: str = ""      # "" = none (video + polyp id, patient ...)


def build_labeled_set(
    records: list[Record],
    *,
    name: str,
    fmt: str,
    root: Path,
    where: str,
    sidecar: dict[str, Any] | None = None,
    extra_classes: Sequence[str] = (),
    extra_subclasses: Sequence[tuple[str, str]] = (),
) -> LabeledSet:
    """Order: the sidecar's class/subclass order when present, else classes sorted by name and
    subclasses sorted within their class. A subclass name used by two classes is qualified as
    ``class.subclass``. Splits are left as given ("" where unknown): ``load_dataset`` fills them.
    """
    if not records:
        raise DataError(f"{where}: no images found; expected at least one image per class")
    sidecar = sidecar or {}
    pairs = {(r.cls, r.sub) for r in records} | set(extra_subclasses)
    classes_found = {c for c, _ in pairs} | set(extra_classes)

    sc_classes = sidecar.get("class_names")
    if sc_classes:
        unknown = sorted(classes_found - set(sc_classes))
        if unknown:
            raise DataError(f"{where}: class(es) {', '.join(unknown)} not listed in {SIDECAR}; "
                            f"add them there or delete {SIDECAR}")
        class_names = list(sc_classes)
    else:
        class_names = sorted(classes_found)
    bg_name = sidecar.get("background_class")
    if bg_name is not None and bg_name not in class_names:
        raise DataError(f"{where}: {SIDECAR} names background_class {bg_name!r}, which is not a class "
                        f"({', '.join(class_names)}); fix {SIDECAR}")
    if bg_name is None and BACKGROUND_NAME in class_names:
        bg_name = BACKGROUND_NAME
    if bg_name is not None and not sc_classes:   # the "no polyp" class goes last
        class_names = [c for c in class_names if c != bg_name] + [bg_name]
    if len(class_names) < 2:
        raise DataError(f"{where}: found {len(class_names)} class ({', '.join(class_names) or 'none'}); "
                        "a classifier needs at least 2 classes")

    sub_by_class: dict[str, list[str]] = {c: [] for c in class_names}
    sc_subs, sc_s2c = sidecar.get("subclass_names"), sidecar.get("subclass_to_class")
    if sc_subs and sc_s2c and len(sc_subs) == len(sc_s2c) and sc_classes:
        for s, ci in zip(sc_subs, sc_s2c):
            if 0 <= ci < len(sc_classes):
                sub_by_class[sc_classes[ci]].append(s)
    for c in class_names:
        rest = sorted(s for (cc, s) in pairs if cc == c and s not in sub_by_class[c])
        sub_by_class[c] += rest
    for c in class_names:
        if not sub_by_class[c]:
            raise DataError(f"{where}: class {c!r} has no subclass; give every class at least one subclass")

    owners: dict[str, list[str]] = {}
    for c in class_names:
        for s in sub_by_class[c]:
            owners.setdefault(s, []).append(c)
    subclass_names, subclass_to_class, index = [], [], {}
    for ci, c in enumerate(class_names):
        for s in sub_by_class[c]:
            shown = s if len(owners[s]) == 1 else f"{c}.{s}"
            index[(c, s)] = len(subclass_names)
            subclass_names.append(shown)
            subclass_to_class.append(ci)

    cls_index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([cls_index[r.cls] for r in records], np.int64)
    subs = np.array([index[(r.cls, r.sub)] for r in records], np.int64)
    splits = np.array([r.split for r in records], dtype=object)
    votes_list = [r.votes for r in records]
    votes = np.array(votes_list, np.int64) if any(v >= 0 for v in votes_list) else None
    group_list = [r.group for r in records]
    groups = None
    if any(group_list):
        if not all(group_list):
            n_empty = sum(not g for g in group_list)
            raise DataError(f"{where}: {n_empty} image(s) have an empty group while others have one; "
                            "give every image a group or none")
        groups = np.array(group_list, dtype=object)
    info: dict[str, Any] = {"warnings": []}
    for key in ("positive_class", "subclass_definition", "generator", "label_noise_rate"):
        if key in sidecar:
            info[key] = sidecar[key]
    return LabeledSet(
        name=name, format=fmt, class_names=class_names, subclass_names=subclass_names,
        subclass_to_class=subclass_to_class, labels=labels, subclasses=subs, splits=splits,
        paths=[r.path for r in records], votes=votes, root=root, info=info,
        background_class=class_names.index(bg_name) if bg_name is not None else None, groups=groups,
    )


def normalise_split(value: str, *, where: str) -> str:
    v = value.strip().lower()
    aliases = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}
    v = aliases.get(v, v)
    if v and v not in SPLITS:
        raise DataError(f"{where}: unknown split {value!r}; use one of {', '.join(SPLITS)}")
    return v
