"""Folder tree: ``ROOT/[train|val|test/]<class>/<subclass>/<image>`` (png, jpg, jpeg, bmp, tif)."""

from __future__ import annotations

from pathlib import Path

from edgeskd.data.base import SPLITS, LabeledSet
from edgeskd.data.images import IMAGE_SUFFIXES
from edgeskd.data.records import Record, build_labeled_set, read_sidecar
from edgeskd.errors import DataError

LAYOUT = "ROOT/[train|val|test/]<class>/<subclass>/<image>"


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "_"))


def _subdirs(p: Path) -> list[Path]:
    return sorted(c for c in p.iterdir() if c.is_dir() and _visible(c))


def _images(p: Path) -> list[Path]:
    return sorted(c for c in p.iterdir() if c.is_file() and _visible(c) and c.suffix.lower() in IMAGE_SUFFIXES)


def load_folder(root: Path) -> LabeledSet:
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; a folder-tree data set is laid out as {LAYOUT}")
    top = _subdirs(root)
    if not top:
        raise DataError(f"{root} has no folders; expected {LAYOUT}")
    split_dirs = [d for d in top if d.name.lower() in SPLITS]
    if split_dirs and len(split_dirs) != len(top):
        others = [d.name for d in top if d not in split_dirs]
        raise DataError(f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
                        f"({', '.join(others)}); expected {LAYOUT}")
    if _images(root):
        raise DataError(f"{root} has images directly in it; expected {LAYOUT}")
    bases = [(d, d.name.lower()) for d in split_dirs] if split_dirs else [(root, "")]

    records: list[Record] = []
    classes: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    seen: dict[str, Path] = {}
    resolved_root = root.resolve()
    for base, split in bases:
        if _images(base):
            raise DataError(f"{base} has images directly in it; expected {LAYOUT}")
        for cdir in _subdirs(base):
            classes.add(cdir.name)
            subdirs = _subdirs(cdir)
            loose = _images(cdir)
            if not subdirs:
                raise DataError(f"class folder {cdir} has no subclass folders; expected {LAYOUT} — "
                                f"put its images in at least one subclass folder (e.g. {cdir.name}/all/)")
            if loose:
                raise DataError(f"class folder {cdir} has images outside its subclass folders "
                                f"(e.g. {loose[0].name}); move them into a subclass folder")
            for sdir in subdirs:
                pairs.add((cdir.name, sdir.name))
                if _subdirs(sdir):
                    raise DataError(f"subclass folder {sdir} has folders inside; expected {LAYOUT} "
                                    "(images directly in the subclass folder)")
                for img in _images(sdir):
                    if not img.resolve().is_relative_to(resolved_root):
                        raise DataError(f"{img} resolves outside the data set root {root} (symlink?); "
                                        "keep images inside the root")
                    if img.name in seen:
                        raise DataError(f"duplicate image name {img.name!r}: {seen[img.name]} and {img}; "
                                        "image names must be unique across the tree (a repeated image "
                                        "leaks between classes or splits) — rename or remove one")
                    seen[img.name] = img
                    records.append(Record(img, cdir.name, sdir.name, split))
    if not records:
        raise DataError(f"{root} has no images ({', '.join(IMAGE_SUFFIXES)}); expected {LAYOUT}")
    sidecar = read_sidecar(root)
    votes = sidecar.get("votes")
    if isinstance(votes, dict):  # written by `edgeskd synth --format folder`
        for r in records:
            v = votes.get(r.path.name)
            if isinstance(v, int) and 0 <= v <= 7:
                r.votes = v
    groups = sidecar.get("groups")
    if isinstance(groups, dict):  # written by `edgeskd synth --format folder`: clip / polyp ids
        for r in records:
            g = groups.get(r.path.name)
            if isinstance(g, str) and g:
                r.group = g
    return build_labeled_set(records, name=root.name or str(root), fmt="folder", root=root, where=str(root),
                             sidecar=sidecar, extra_classes=sorted(classes),
                             extra_subclasses=sorted(pairs))
