"""Data layer: every format (MHIST, folder tree, CSV manifest, the synthetic default) loads into one
``LabeledSet``; ``load_dataset`` is the entry point for training, calibration, evaluation and ``info``.

Images are decoded lazily (``LabeledSet.load_image`` names the file it cannot decode), except with
``skip_bad=True`` or ``verify=True``, which decode every image up front — ``edgeskd info`` always
verifies. Warnings a user should see (a subclass missing from test, votes that disagree with
labels, skipped images) are collected in ``ls.info["warnings"]``; commands print them.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeskd.data.base import SPLITS, LabeledSet
from edgeskd.errors import DataError, UsageError

__all__ = ["LabeledSet", "SPLITS", "FORMATS", "load_dataset", "detect_format", "verify_images",
           "synthetic_default", "finalize_splits", "DEFAULT_SYNTHETIC_N", "DEFAULT_IMG_SIZE"]

FORMATS = ("auto", "mhist", "folder", "manifest", "synthetic")
DEFAULT_SYNTHETIC_N = 3000
DEFAULT_IMG_SIZE = 128


def detect_format(path: str | Path) -> str:
    """'mhist' | 'manifest' | 'folder' for an existing path (DataError if it is none of them)."""
    from edgeskd.data.manifest import MANIFEST, manifest_header
    from edgeskd.data.mhist import ANNOTATIONS, is_mhist_csv

    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist; give an MHIST root, a folder tree or a manifest CSV")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DataError(f"{p} is a file but not a CSV; give an MHIST root, a folder tree or a manifest CSV")
        if is_mhist_csv(p):
            return "mhist"
        if {"path", "class", "subclass"} <= set(manifest_header(p)):
            return "manifest"
        raise DataError(f"{p}: header is neither MHIST nor a manifest (path,class,subclass[,split][,votes])")
    if not any(c for c in p.iterdir() if not c.name.startswith(".")):
        raise DataError(f"data directory {p} is empty; put a data set there or run `edgeskd synth {p}`")
    if (p / ANNOTATIONS).is_file():
        return "mhist"
    if (p / MANIFEST).is_file():
        return "manifest"
    csvs = [c for c in sorted(p.glob("*.csv")) if {"path", "class", "subclass"} <= set(manifest_header(c))]
    if len(csvs) == 1:
        return "manifest"
    if len(csvs) > 1:
        raise DataError(f"{p} holds several manifest CSVs ({', '.join(c.name for c in csvs)}); pass one of them")
    return "folder"


def load_dataset(
    path: str | Path | None = None,
    format: str = "auto",
    *,
    seed: int = 0,
    skip_bad: bool = False,
    vote_bins: str | Sequence[Sequence[int]] | None = None,
    synthetic_n: int = DEFAULT_SYNTHETIC_N,
    img_size: int = DEFAULT_IMG_SIZE,
    verify: bool = False,
    group_by: str | None = None,
) -> LabeledSet:
    """Load a data set and make sure it has train/val/test splits.

    ``path=None`` or ``format="synthetic"``: the embedded synthetic default (``synthetic_n``
    frames of ``img_size``², generator seed ``seed``; cached under ``~/.cache/edgeskd``).
    Missing splits: none given → stratified 70/15/15 by subclass; no val → carved from train;
    no test → carved from train (with a warning). ``seed`` seeds these splits.
    ``vote_bins`` (MHIST only): e.g. ``"0|1,2|3|4|5,6|7"``. ``skip_bad``: decode every image and
    drop (and count) unreadable ones instead of failing; ``verify``: decode every image, fail on
    the first bad one. ``group_by`` (manifests only): the column holding each image's group
    (video + polyp, patient ...); by default a manifest's ``group`` column when it has one. Data
    with groups is split by group (no group in two splits).
    """
    fmt = str(getattr(format, "value", format))
    if fmt not in FORMATS:
        raise UsageError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if path is None or fmt == "synthetic":
        if path is not None:
            raise UsageError(f"--format synthetic takes no data path (got {path}); drop one of them")
        if vote_bins is not None:
            raise UsageError("--vote-bins applies to MHIST data only; the synthetic set's subclasses are fixed")
        if group_by is not None:
            raise UsageError("--group-by applies to manifest data only; the synthetic set is split by clip already")
        return finalize_splits(synthetic_default(synthetic_n, img_size, seed), seed)

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {p} does not exist; give an MHIST root, a folder tree or a manifest CSV")
    if fmt == "auto":
        fmt = detect_format(p)
    elif p.is_dir() and not any(c for c in p.iterdir() if not c.name.startswith(".")):
        raise DataError(f"data directory {p} is empty; put a data set there or run `edgeskd synth {p}`")
    if vote_bins is not None and fmt != "mhist":
        raise UsageError(f"--vote-bins applies to MHIST data only; {p} is a {fmt} data set")
    if group_by is not None and fmt != "manifest":
        raise UsageError(f"--group-by applies to manifest data only (a group column); {p} is a {fmt} data set")
    if fmt == "mhist":
        from edgeskd.data.mhist import load_mhist

        ls = load_mhist(p, vote_bins=vote_bins)
    elif fmt == "manifest":
        from edgeskd.data.manifest import load_manifest

        ls = load_manifest(p, group_by=group_by)
    else:
        from edgeskd.data.folder import load_folder

        if not p.is_dir():
            raise DataError(f"{p} is not a directory; a folder tree is ROOT/[split/]<class>/<subclass>/<image>")
        ls = load_folder(p)
    ls.info.setdefault("warnings", [])
    if skip_bad or verify:
        ls = verify_images(ls, skip_bad=skip_bad)
    return finalize_splits(ls, seed)


def verify_images(ls: LabeledSet, *, skip_bad: bool = False) -> LabeledSet:
    """Decode every image. Bad one: DataError naming it, or with ``skip_bad`` drop it and record
    it in ``info["skipped_bad"]`` (and a warning)."""
    if ls.paths is None:
        return ls
    from edgeskd.data.images import read_image

    def check(i: int) -> str | None:
        try:
            read_image(ls.paths[i])  # type: ignore[index]
            return None
        except DataError as e:
            return str(e)

    with ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as ex:
        errors = list(ex.map(check, range(len(ls))))
    bad = [i for i, e in enumerate(errors) if e is not None]
    if not bad:
        ls.info.setdefault("skipped_bad", [])
        return ls
    if not skip_bad:
        names = ", ".join(str(ls.paths[i]) for i in bad[1:4])  # type: ignore[index]
        extra = f"; {len(bad) - 1} more bad image(s): {names}{', …' if len(bad) > 4 else ''}" if len(bad) > 1 else ""
        raise DataError(f"{errors[bad[0]]}{extra} (--skip-bad trains without them)")
    keep = np.ones(len(ls), bool)
    keep[bad] = False
    out = ls.subset(keep)
    out.info = dict(ls.info)
    names = [str(ls.paths[i]) for i in bad]  # type: ignore[index]
    out.info["skipped_bad"] = names
    out.info["warnings"] = list(ls.info.get("warnings", [])) + [
        f"skipped {len(bad)} unreadable image(s) (--skip-bad), e.g. {names[0]}"]
    if len(out) == 0:
        raise DataError("every image is unreadable; nothing left after --skip-bad")
    return out


def finalize_splits(ls: LabeledSet, seed: int = 0) -> LabeledSet:
    """Fill missing splits (see ``load_dataset``; by group when the data has groups) and check
    what training needs; add warnings (among them any group found in two splits)."""
    from edgeskd.data.splits import VAL_FROM_TRAIN, carve_group_split, carve_split, group_split, stratified_split

    warnings: list[str] = ls.info.setdefault("warnings", [])
    sp = np.asarray(ls.splits, dtype=object).copy()
    given = sp != ""
    groups = ls.groups

    def carve(mask: np.ndarray, name: str) -> np.ndarray:
        if groups is None:
            return carve_split(ls.subclasses[mask], seed, frac=VAL_FROM_TRAIN, name=name)
        return carve_group_split(ls.subclasses[mask], groups[mask], seed, frac=VAL_FROM_TRAIN, name=name)

    if not given.any():
        if groups is None:
            sp = stratified_split(ls.subclasses, seed)
            ls.info["split_source"] = "stratified 70/15/15 by subclass"
        else:
            sp = group_split(ls.subclasses, groups, seed)
            ls.info["split_source"] = "by group, about 70/15/15, stratified by subclass"
    else:
        if not given.all():
            raise DataError("some images have a split and some do not; give every image a split or none")
        have = set(sp)
        if "train" not in have:
            raise DataError(f"no train split (found {', '.join(sorted(have))}); add a train split")
        src = [ls.info.get("split_source", "given")]
        if "test" not in have:
            tr = sp == "train"
            sp[tr] = np.where(carve(tr, "test") == "test", "test", "train")
            warnings.append(f"no test split: carved {VAL_FROM_TRAIN:.1%} of train as test"
                            + (" (by group)" if groups is not None else ""))
            src.append("test carved from train")
        if "val" not in have:
            tr = sp == "train"
            sp[tr] = carve(tr, "val")
            src.append("val carved from train" + (" by group" if groups is not None else ""))
        ls.info["split_source"] = ", ".join(src)
    ls.splits = sp
    if groups is not None:
        from edgeskd.data.splits import straddling_groups

        leaks = straddling_groups(groups, sp)
        ls.info["straddling_groups"] = leaks
        if leaks:
            g, where = next(iter(leaks.items()))
            warnings.append(f"{len(leaks)} group(s) in more than one split (e.g. {g!r} in {'/'.join(where)}): "
                            "frames of one polyp/patient in train and test inflate every figure; "
                            "give each group one split, or drop the split column to split by group")

    present = np.unique(ls.labels)
    if len(present) < 2:
        raise DataError(f"only one class has images ({ls.class_names[int(present[0])]}); "
                        "a classifier needs images of at least 2 classes")
    tr = ls.splits == "train"
    no_train = [ls.class_names[c] for c in range(ls.num_classes) if not np.any(ls.labels[tr] == c)]
    if no_train:
        raise DataError(f"class(es) {', '.join(no_train)} have no training images; add some to train")
    te = ls.splits == "test"
    for s, name in enumerate(ls.subclass_names):
        n_tr, n_te = int(np.sum(ls.subclasses[tr] == s)), int(np.sum(ls.subclasses[te] == s))
        if n_tr == 0:
            warnings.append(f"subclass {name!r} has no training images; the teacher cannot learn it")
        elif n_te == 0:
            warnings.append(f"subclass {name!r} has {n_tr} training image(s) but none in test; "
                            "its test accuracy cannot be measured")
    return ls


# ----------------------------------------------------------------------------------------------
# The synthetic default, cached on disk (deterministic, so the cache only saves time)
# ----------------------------------------------------------------------------------------------
_CACHE_MIN_PIXELS = 1 << 22  # only sets worth caching (≥ 256 frames at 128²)


def _cache_file(n: int, size: int, seed: int) -> Path | None:
    from edgeskd.data.synthetic import GENERATOR_VERSION, RENDER_REVISION

    if os.environ.get("EDGESKD_NO_CACHE", "") not in ("", "0") or n * size * size < _CACHE_MIN_PIXELS:
        return None
    base = Path(os.environ.get("EDGESKD_CACHE_DIR") or Path.home() / ".cache" / "edgeskd")
    return base / f"synthetic-v{GENERATOR_VERSION}.{RENDER_REVISION}-n{n}-s{size}-seed{seed}.npz"


_ARRAYS = ("labels", "subclasses", "votes")
_INFO_ARRAYS = ("true_labels", "visual_subclasses", "ambiguity")


def synthetic_default(n: int = DEFAULT_SYNTHETIC_N, size: int = DEFAULT_IMG_SIZE, seed: int = 0) -> LabeledSet:
    """``make_synthetic(n, size, seed)``, read from / written to the cache when it is large."""
    from edgeskd.data import synthetic

    f = _cache_file(n, size, seed)
    if f is not None and f.is_file():
        try:
            return _load_cached(f)
        except Exception:  # a damaged cache is regenerated, never trusted
            pass
    ls = synthetic.make_synthetic(n, size, seed)
    if f is not None:
        try:
            _save_cached(f, ls)
        except OSError:
            pass  # caching is an optimisation; an unwritable cache dir is not an error
    return ls


def _save_cached(f: Path, ls: LabeledSet) -> None:
    from edgeskd.utils.io import atomic_path

    scalars = {k: v for k, v in ls.info.items() if k not in _INFO_ARRAYS}
    arrays: dict[str, Any] = {k: getattr(ls, k) for k in _ARRAYS}
    arrays.update({f"info_{k}": ls.info[k] for k in _INFO_ARRAYS})
    f.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(f) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=ls.images, splits=np.asarray(ls.splits, dtype="U5"),
                     groups=np.asarray(ls.groups, dtype=str),
                     meta=np.frombuffer(json.dumps({"name": ls.name, "info": scalars}).encode(), np.uint8),
                     **arrays)


def _load_cached(f: Path) -> LabeledSet:
    from edgeskd.data import synthetic as sy

    with np.load(f, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        info = dict(meta["info"])
        info.update({k: z[f"info_{k}"] for k in _INFO_ARRAYS})
        return LabeledSet(
            name=meta["name"], format="synthetic", class_names=list(sy.CLASS_NAMES),
            subclass_names=list(sy.SUBCLASS_NAMES), subclass_to_class=list(sy.SUBCLASS_TO_CLASS),
            labels=z["labels"], subclasses=z["subclasses"], splits=z["splits"].astype(object),
            images=z["images"], votes=z["votes"], n_annotators=sy.N_ANNOTATORS, info=info,
            background_class=sy.BACKGROUND_CLASS, groups=z["groups"].astype(object),
        )
