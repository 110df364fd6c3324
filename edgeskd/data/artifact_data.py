"""Which data belongs to an artifact: the training data a checkpoint or ONNX records (a "data
reference"), or a path the user gives. The export parity check, calibration, the accuracy gate and
the benchmark read their samples through this, with the classes in the model's order.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgeskd.data import load_dataset
from edgeskd.errors import DataError


def data_ref_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """{"data", "format", "seed", "synthetic_n", "img_size", "skip_bad"} from an ``edgeskd train`` checkpoint.

    ``img_size`` matters for the synthetic set: training renders it at the model's input size, so
    evaluation must render it at the same size to see the same images."""
    cfg = (ckpt.get("config") or {}).get("train") or {}
    if not cfg:
        return None
    return {
        "data": cfg.get("data"),
        "format": cfg.get("format", "auto"),
        "seed": int(cfg.get("data_seed", 0)),
        "synthetic_n": cfg.get("synthetic_n"),
        "img_size": cfg.get("img_size"),
        "skip_bad": bool(cfg.get("skip_bad", False)),
        "group_by": cfg.get("group_by"),
    }


def data_id(path: str | Path) -> str:
    """A stable id of a data folder on this machine (a hash of its resolved path): artifacts that
    travel record this, never the path itself (a hospital's folder names stay at the hospital)."""
    import hashlib

    return hashlib.sha256(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:16]


def portable_data_ref(ref: dict[str, Any] | None) -> dict[str, Any] | None:
    """``ref`` as ONNX / engine metadata records it: a data path becomes ``data_id`` (its hash), so
    ``--data`` must name the data again on another machine; the synthetic set's settings stay."""
    if not ref or not ref.get("data"):
        return ref
    return {**ref, "data": None, "data_id": data_id(ref["data"])}


def data_ref_of_artifact(path: Path) -> dict[str, Any] | None:
    """The data reference recorded in a checkpoint (its training config) or an ONNX (``edgeskd.extra``
    metadata); None for an engine or an artifact that records none."""
    from edgeskd.runtime.formats import Format, detect_format

    fmt = detect_format(path)
    if fmt is Format.torch:
        from edgeskd.models.checkpoint import load_checkpoint

        return data_ref_from_checkpoint(load_checkpoint(path))
    if fmt is Format.onnx:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        extra = json.loads(props.get("edgeskd.extra", "{}"))
        return extra.get("data") if isinstance(extra, dict) else None
    return None


def data_refs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Each distinct data reference among the artifacts at ``paths``, in their order; unreadable
    artifacts are passed over (the caller reports them)."""
    refs: list[dict[str, Any]] = []
    for p in paths:
        try:
            ref = data_ref_of_artifact(Path(p))
        except Exception:  # noqa: BLE001 - an unreadable artifact is reported where it is used
            continue
        if not isinstance(ref, dict):
            continue
        same = [i for i, r in enumerate(refs) if _data_key(ref) == _data_key(r)]
        if not same:
            refs.append(ref)
        elif ref.get("data") and not refs[same[0]].get("data"):   # a checkpoint's path beats an ONNX's hash
            refs[same[0]] = ref
    return refs


def _data_key(ref: dict[str, Any]) -> tuple:
    """What makes two references different images: a real data set is read at each model's own
    input size; the synthetic one is rendered at the training size, so that size counts too."""
    where = _trained_on(ref)
    base = (where, ref.get("format"), ref.get("seed"), ref.get("skip_bad"), ref.get("group_by"))
    return base if where else (*base, ref.get("synthetic_n"), ref.get("img_size"))


def _trained_on(ref: dict[str, Any]) -> str | None:
    """The id of the real data set ``ref`` names (its path's hash, or the hash it carries); None: synthetic."""
    return data_id(ref["data"]) if ref.get("data") else ref.get("data_id")


def describe_data_ref(ref: dict[str, Any]) -> str:
    if ref.get("data"):
        return str(ref["data"])
    if ref.get("data_id"):
        return f"data set {ref['data_id']} (recorded by hash; give --data)"
    return f"synthetic n={ref.get('synthetic_n')} at {ref.get('img_size')} px, seed {ref.get('seed')}"


def load_data(ref: dict[str, Any] | None = None, *, path: str | Path | None = None, fmt: str = "auto",
              seed: int | None = None):
    """A LabeledSet: ``path`` (user's choice) wins over ``ref`` (the artifact's training data)."""
    ref = ref or {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise DataError(f"data {p} does not exist; give an MHIST root, folder tree or manifest CSV")
        kw_path: dict[str, Any] = {"seed": seed} if seed is not None else {}
        if ref.get("group_by") and _trained_on(ref) == data_id(p):   # the training data again: split it the same way
            kw_path["group_by"] = ref["group_by"]
        return load_dataset(p, fmt, **kw_path)
    if ref.get("data_id") and not ref.get("data"):
        raise DataError(f"the model records its training data by hash only ({ref['data_id']}), not by path; "
                        "pass --data (or --calib-data) to point at it")
    p = Path(ref["data"]) if ref.get("data") else None
    if p is not None and not p.exists():
        raise DataError(f"the model was trained on {p}, which is not here; pass --data (or --calib-data) to point at it")
    f = ref.get("format", "auto")
    if p is None and f == "auto":
        f = "synthetic"
    kw: dict[str, Any] = {"seed": int(ref.get("seed", 0) if seed is None else seed)}
    if ref.get("synthetic_n"):
        kw["synthetic_n"] = int(ref["synthetic_n"])
    if ref.get("img_size") and f == "synthetic":
        kw["img_size"] = int(ref["img_size"])
    if ref.get("skip_bad"):
        kw["skip_bad"] = True
    if ref.get("group_by"):
        kw["group_by"] = ref["group_by"]
    return load_dataset(p, f, **kw)


def check_compatible_data(dataset, meta) -> None:
    """The data must have the model's classes (names and order)."""
    if list(dataset.class_names) != list(meta.class_names):
        raise DataError(
            f"data set classes {list(dataset.class_names)} differ from the model's {list(meta.class_names)}; "
            "give the data the model was trained on"
        )


def align_classes(dataset, meta):
    """``dataset`` with labels renumbered to the model's class order when the names match in another
    order (a folder tree sorts class folders alphabetically); DataError if the names differ."""
    data_names, model_names = list(dataset.class_names), list(meta.class_names)
    if data_names == model_names:
        return dataset
    if sorted(data_names) != sorted(model_names):
        check_compatible_data(dataset, meta)   # raises with both lists
    perm = np.array([model_names.index(n) for n in data_names], dtype=np.int64)
    return dataclasses.replace(dataset, class_names=model_names,
                               labels=perm[np.asarray(dataset.labels, dtype=np.int64)])
