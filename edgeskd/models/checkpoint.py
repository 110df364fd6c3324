"""edgeskd checkpoints: a state dict plus everything needed to rebuild and use the model.

Layout (all plain types, loadable with ``torch.load(weights_only=True)``)::

    {"format": "edgeskd-checkpoint", "version": 1,
     "state_dict": {...}, "meta": ModelMeta.to_dict(),   # meta.arch, meta.output (head kind)
     "config": {...}, "metrics": {...}, "epoch": int,
     "train_state": {...} | absent}                        # optimizer/scheduler for --resume
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeskd.errors import ArtifactError
from edgeskd.meta import ModelMeta
from edgeskd.models.weights import load_weights_only
from edgeskd.utils.io import atomic_path

FORMAT = "edgeskd-checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    meta: ModelMeta,
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    epoch: int = 0,
    train_state: dict[str, Any] | None = None,
) -> Path:
    model = getattr(model, "module", model)  # unwrap DDP
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},  # NCHW order
        "meta": meta.to_dict(),
        "config": config or {},
        "metrics": metrics or {},
        "epoch": int(epoch),
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate an edgeskd checkpoint (weights_only=True: no code runs on load)."""
    p = Path(path)
    if p.is_dir():
        raise ArtifactError(f"{p} is a directory; give a checkpoint file in it, e.g. {p / 'student-skd.pt'}")
    if not p.is_file():
        raise ArtifactError(f"checkpoint {p} does not exist")
    try:
        ckpt = load_weights_only(p)
    except Exception as e:  # noqa: BLE001 - corrupt zip, pickle with code, truncated file...
        raise ArtifactError(
            f"{p} is not a readable checkpoint ({type(e).__name__}); give a student-*.pt or teacher.pt "
            "written by `edgeskd train`"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ArtifactError(f"{p} is not an edgeskd checkpoint; give a .pt written by `edgeskd train`")
    if ckpt.get("version", 0) > VERSION:
        raise ArtifactError(f"{p} is from a newer edgeskd (checkpoint v{ckpt['version']}); upgrade edgeskd")
    for key in ("state_dict", "meta"):
        if key not in ckpt:
            raise ArtifactError(f"{p} is an incomplete edgeskd checkpoint (no {key!r})")
    ckpt["meta"] = ModelMeta.from_dict(ckpt["meta"], source=str(p))
    return ckpt


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, ModelMeta, dict[str, Any]]:
    """(model in eval mode, its metadata, the raw checkpoint)."""
    from edgeskd.models.registry import create_model

    ckpt = load_checkpoint(path)
    meta: ModelMeta = ckpt["meta"]
    if not meta.arch:
        raise ArtifactError(f"{path}: metadata has no arch; re-train or re-save the checkpoint")
    model = create_model(meta.arch, meta.num_outputs, img_size=int(min(meta.input_size)))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ArtifactError(f"{path}: weights do not fit {meta.arch} with {meta.num_outputs} outputs ({first})") from None
    return model.eval(), meta, ckpt
