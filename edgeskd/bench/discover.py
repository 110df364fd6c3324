"""Which artifacts ``edgeskd bench`` measures: run directories (their teacher and students),
checkpoints, ONNX files, engines, and directories holding any of these (one level deep)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgeskd.errors import ArtifactError
from edgeskd.runtime.formats import all_suffixes, detect_format

RUN_MODEL_ORDER = ("teacher", "student-none", "student-kd", "student-skd")


@dataclass
class Artifact:
    name: str
    path: Path
    error: str | None = None        # set when the artifact cannot even be classified


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and (p / "metrics.json").is_file() and any(p.glob("*.pt"))


def _run_models(run: Path) -> list[Artifact]:
    found = {pt.stem: pt for pt in run.glob("*.pt")}
    ordered = [m for m in RUN_MODEL_ORDER if m in found] + sorted(set(found) - set(RUN_MODEL_ORDER))
    return [Artifact(name, found[name]) for name in ordered if not name.endswith(".last")]


def _name_for(path: Path) -> str:
    name = path.name
    for s in sorted(all_suffixes(), key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _is_artifact_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and any(p.name.lower().endswith(s) for s in all_suffixes())


def _in_directory(p: Path) -> list[Artifact]:
    """The run directories and artifact files directly inside ``p`` (an error entry if none)."""
    children = sorted(p.iterdir())
    found = [a for c in children if _is_run_dir(c) for a in _run_models(c)]
    found += [Artifact(_name_for(c), c) for c in children if _is_artifact_file(c)]
    return found or [Artifact(p.name, p, error=f"{p} holds no run directory, .pt, .onnx or .engine file")]


def _named(p: Path) -> list[Artifact]:
    """The artifacts one command-line path stands for."""
    if not p.exists():
        return [Artifact(p.name or str(p), p, error=f"{p} does not exist")]
    if _is_run_dir(p):
        return _run_models(p)
    if p.is_dir():
        return _in_directory(p)
    try:
        detect_format(p)
    except ArtifactError as e:
        return [Artifact(p.name, p, error=f"unknown artifact kind: {e}")]
    return [Artifact(_name_for(p), p)]


def discover(paths: Sequence[str | os.PathLike]) -> list[Artifact]:
    """The artifacts named on the command line, each once, in the order given."""
    out: list[Artifact] = []
    seen: set[Path] = set()
    for raw in paths:
        for a in _named(Path(raw)):
            key = a.path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(a)
    return out
