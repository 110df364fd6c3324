"""A model's files in a run folder, its best-epoch selection, and the state ``--resume`` restores.

``<name>.last.pt`` is rewritten (atomically) after every epoch with the weights, the optimizer,
scheduler and AMP-scaler state and the selection so far; ``<name>.pt`` is written once training
ends, with the best epoch's weights, and the ``.last.pt`` is removed. ``--resume`` loads a
finished ``<name>.pt`` as is, or continues from ``<name>.last.pt`` after its last finished epoch;
both refuse checkpoints trained with other settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeskd.distill.config import TrainConfig
from edgeskd.errors import UsageError
from edgeskd.meta import ModelMeta


def check_resume_config(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    """--resume only continues a checkpoint trained with the same result-changing settings."""
    old = (ckpt.get("config") or {}).get("fingerprint")
    new = cfg.fingerprint()
    if old is None:
        raise UsageError(f"--resume: {path} has no training settings recorded; start a new run with a new --out")
    old = TrainConfig.normalized_fingerprint(old)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        k = diff[0]
        raise UsageError(f"--resume: {path} was trained with {k.replace('_', '-')}={old.get(k)!r}, now "
                         f"{new[k]!r}; resume with the same options or use a new --out")


@dataclass
class Selection:
    """Best validation F1 so far (AUC breaks ties), the weights of that epoch, and every epoch's log record."""

    best_score: tuple[float, float] = (-1.0, -1.0)
    best_epoch: int = -1
    best_state: dict | None = None
    best_val: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def offer(self, epoch: int, val: dict, model) -> bool:
        """Keep ``model``'s weights if this epoch's validation beats the best; True if it did."""
        score = (val["f1"], val["auc"] if val["auc"] is not None else -1.0)
        if score <= self.best_score:
            return False
        self.best_score, self.best_epoch, self.best_val = score, epoch, val
        self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True

    def to_state(self) -> dict[str, Any]:
        return {"best_score": list(self.best_score), "best_epoch": self.best_epoch, "best_state": self.best_state,
                "best_val": self.best_val, "history": self.history}

    @classmethod
    def from_state(cls, ts: dict[str, Any]) -> "Selection":
        return cls(tuple(ts["best_score"]), int(ts["best_epoch"]), ts["best_state"], ts["best_val"],
                   list(ts["history"]))


class ModelFiles:
    """``<name>.pt`` and ``<name>.last.pt`` of one model of one seed, and the settings they record."""

    def __init__(self, folder: Path, name: str, cfg: TrainConfig, seed: int, record: dict | None = None) -> None:
        self.final = folder / f"{name}.pt"
        self.last = folder / f"{name}.last.pt"
        self.cfg = cfg
        self.config = {"train": cfg.to_dict(), "fingerprint": cfg.fingerprint(), "seed": seed, **(record or {})}

    def _load_for_resume(self, path: Path) -> dict | None:
        if not (self.cfg.resume and path.is_file()):
            return None
        from edgeskd.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        check_resume_config(ckpt, self.cfg, path)
        return ckpt

    def finished(self) -> dict | None:
        """Under --resume: the model's final checkpoint from an earlier run (None if absent)."""
        return self._load_for_resume(self.final)

    def interrupted(self) -> dict | None:
        """Under --resume: the model's last-epoch checkpoint from an interrupted run (None if absent)."""
        return self._load_for_resume(self.last)

    def save_last(self, model, meta: ModelMeta, epoch: int, val: dict, train_state: dict[str, Any]) -> None:
        from edgeskd.models.checkpoint import save_checkpoint

        save_checkpoint(self.last, model, meta, config=self.config, metrics={"val": val}, epoch=epoch,
                        train_state=train_state)

    def save_final(self, model, meta: ModelMeta, best_epoch: int, metrics: dict[str, Any]) -> None:
        from edgeskd.models.checkpoint import save_checkpoint

        save_checkpoint(self.final, model, meta, config=self.config, epoch=best_epoch, metrics=metrics)
        self.last.unlink(missing_ok=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src``'s bytes at ``dst`` atomically (a hard link where the file system allows one)."""
    import os
    import shutil

    from edgeskd.utils.io import atomic_path

    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
