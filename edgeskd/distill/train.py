"""The training pipeline: teacher on subclasses → students (plain, KD, SKD), over seeds, with DDP.

``run_training(TrainConfig) -> dict`` is the library entry point (``edgeskd train``, quickstart).
It returns what it writes to ``OUT/metrics.json``.

Per seed: the teacher is trained on the known subclasses (CE on subclass labels) or on K invented
subclasses per class (CE on the logsumexp class logits + β·L_aux), then frozen (eval mode,
``requires_grad=False``, forward under ``no_grad``) and each student mode is trained:

* ``none`` — C class logits, CE on class labels;
* ``kd``   — C class logits, distilled from the teacher's logsumexp class logits;
* ``skd``  — one logit per teacher subclass, distilled from the teacher's subclass logits.

Model selection: the epoch with the best validation F1 (AUC breaks ties); the reported numbers are
that model on the test split, evaluated through the runtime's ``preprocess_for`` on un-augmented
images (what ``edgeskd bench`` measures). Every epoch appends a line to ``OUT/log.jsonl`` and
atomically rewrites ``<model>.last.pt`` (weights + optimizer/scheduler/best state), so ``--resume``
continues from the last finished epoch and Ctrl-C never damages a checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.distill import ddp
from edgeskd.distill.config import RUN_CONFIG_FILE, TrainConfig
from edgeskd.distill.evaluate import EvalInputs, evaluate_logits, mean_soft_subclass_distribution, predict_logits
from edgeskd.errors import ArtifactError, DataError, EdgeSKDError, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.utils.io import ensure_writable_dir, write_json_atomic

LossFn = Callable[[Any, Any, Any, Any], dict]


class TrainingDiverged(EdgeSKDError):
    """The loss became NaN/inf."""

    exit_code = 8


# -- data and metadata ------------------------------------------------------------------------
def load_training_data(cfg: TrainConfig):
    """The LabeledSet named by the config (the synthetic set by default), checked for training."""
    from edgeskd.data import load_dataset

    path = Path(cfg.data) if cfg.data is not None else None
    fmt = "synthetic" if path is None and cfg.format == "auto" else cfg.format
    # The synthetic set is rendered at the model's input size (what a camera at that resolution
    # delivers; 10x cheaper than rendering at 128 px and resizing).
    ls = load_dataset(path, fmt, seed=cfg.data_seed, skip_bad=cfg.skip_bad, synthetic_n=cfg.synthetic_n,
                      img_size=cfg.img_size)
    check_trainable(ls)
    return ls


def load_training_data_for(checkpoint) -> Any:
    """The LabeledSet a checkpoint (path or loaded dict) was trained on: same data path, format,
    synthetic size/count/seed and splits — what ``edgeskd bench`` needs to reproduce the F1."""
    from dataclasses import fields as _fields

    from edgeskd.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    train_cfg = (ckpt.get("config") or {}).get("train")
    if not isinstance(train_cfg, dict):
        raise ArtifactError("the checkpoint records no training settings; pass --data explicitly")
    known = {f.name for f in _fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in train_cfg.items() if k in known})
    return load_training_data(cfg)


def check_trainable(ls) -> None:
    counts = {s: int((ls.splits == s).sum()) for s in ("train", "val", "test")}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"data set {ls.name!r} has no {'/'.join(empty)} samples; training needs train, val and "
                        "test splits (give split folders / a split column, or let edgeskd make them)")
    tr = ls.split("train")
    missing = [ls.class_names[c] for c in range(ls.num_classes) if not (tr.labels == c).any()]
    if missing:
        raise DataError(f"no training samples of class {', '.join(missing)}; every class needs examples")


def positive_class(ls) -> int:
    """Index of the positive class (F1/AUC): the data set's own choice, else class 1."""
    pos = ls.info.get("positive_class", 1) if isinstance(ls.info, dict) else 1
    if isinstance(pos, str):
        pos = ls.class_names.index(pos) if pos in ls.class_names else 1
    return int(pos) if 0 <= int(pos) < ls.num_classes else 1


def invented_layout(class_names: list[str], k: int) -> tuple[list[str], list[int]]:
    names = [f"{c}/inv{j}" for c in class_names for j in range(k)]
    return names, [ci for ci in range(len(class_names)) for _ in range(k)]


def teacher_meta(ls, cfg: TrainConfig) -> ModelMeta:
    k = cfg.invent_k
    if k is None:
        names, idx = list(ls.subclass_names), list(ls.subclass_to_class)
    else:
        names, idx = invented_layout(list(ls.class_names), k)
    return ModelMeta(class_names=list(ls.class_names), subclass_names=names, subclass_to_class=idx,
                     input_size=(cfg.img_size, cfg.img_size), output="subclass_logits", arch=cfg.teacher,
                     model_name="teacher", positive_class=positive_class(ls),
                     extra={"subclasses": cfg.subclasses})


def student_meta(mode: str, tmeta: ModelMeta, ls, cfg: TrainConfig) -> ModelMeta:
    if mode == "skd":  # one logit per teacher subclass (known or invented)
        names, idx, output = list(tmeta.subclass_names), list(tmeta.subclass_to_class), "subclass_logits"
    else:
        names, idx, output = list(ls.subclass_names), list(ls.subclass_to_class), "class_logits"
    return ModelMeta(class_names=list(ls.class_names), subclass_names=names, subclass_to_class=idx,
                     input_size=tmeta.input_size, output=output, mean=tmeta.mean, std=tmeta.std,
                     arch=cfg.student, model_name=f"student-{mode}", positive_class=tmeta.positive_class,
                     extra={"subclasses": cfg.subclasses, "distillation": mode})


def check_teacher_matches(tmeta: ModelMeta, ls, cfg: TrainConfig, path: str) -> None:
    """A reused teacher must predict this data's classes/subclasses at this input size."""
    if tmeta.output != "subclass_logits":
        raise ArtifactError(f"--teacher-checkpoint {path} is a {tmeta.output} model ({tmeta.model_name}); "
                            "give a teacher.pt (subclass logits)")
    if list(tmeta.class_names) != list(ls.class_names):
        raise DataError(f"--teacher-checkpoint {path} was trained on classes {tmeta.class_names}, the data has "
                        f"{list(ls.class_names)}; train a new teacher on this data")
    want = teacher_meta(ls, cfg)
    if (list(tmeta.subclass_names), list(tmeta.subclass_to_class)) != (want.subclass_names, want.subclass_to_class):
        raise DataError(f"--teacher-checkpoint {path} has subclasses {tmeta.subclass_names}, this run needs "
                        f"{want.subclass_names} (--subclasses {cfg.subclasses}); use the matching --subclasses "
                        "or train a new teacher")
    if tuple(tmeta.input_size) != (cfg.img_size, cfg.img_size):
        raise UsageError(f"--teacher-checkpoint {path} was trained at {tmeta.input_size[1]}x{tmeta.input_size[0]}, "
                         f"--img-size is {cfg.img_size}; pass --img-size {tmeta.input_size[0]}")


def label_bits(ls) -> float:
    """Extra label bits per sample, H(S) − H(C) = H(S | C), over the training labels."""
    tr = ls.split("train")

    def entropy(v: np.ndarray) -> float:
        _, c = np.unique(v, return_counts=True)
        p = c / c.sum()
        return float(-(p * np.log2(p)).sum())

    return entropy(tr.subclasses) - entropy(tr.labels)


# -- losses per job -----------------------------------------------------------------------------
def make_loss(kind: str, cfg: TrainConfig, tmeta: ModelMeta) -> LossFn:
    from edgeskd.distill import losses as L

    idx = list(tmeta.subclass_to_class)
    if kind == "teacher":
        if cfg.invent_k is None:
            return lambda out, t, y, s: L.ce_loss(out, s)
        return lambda out, t, y, s: L.invented_teacher_loss(out, y, idx, beta=cfg.beta,
                                                            aux_temperature=cfg.aux_temperature)
    if kind == "none":
        return lambda out, t, y, s: L.ce_loss(out, y)
    if kind == "kd":
        return lambda out, t, y, s: L.kd_loss(out, L.subclass_to_class_logits(t, idx), y,
                                              alpha=cfg.alpha, temperature=cfg.temperature)
    if kind == "skd":
        return lambda out, t, y, s: L.skd_loss(out, t, y, idx, alpha=cfg.alpha, temperature=cfg.temperature)
    raise UsageError(f"unknown student mode {kind!r}")


# -- one model --------------------------------------------------------------------------------
@dataclass
class Job:
    name: str                   # teacher | student-none | student-kd | student-skd
    arch: str
    meta: ModelMeta
    loss: LossFn
    epochs: int
    lr: float
    pretrained: str | None = None
    teacher: Any = None         # frozen teacher module for kd / skd


@dataclass
class FitResult:
    model: Any
    meta: ModelMeta
    val: dict
    test: dict
    best_epoch: int
    history: list[dict]
    params: int
    test_logits: np.ndarray | None = None
    path: Path | None = None
    extra: dict = field(default_factory=dict)


class _Env:
    """What every fit shares within one run."""

    def __init__(self, cfg: TrainConfig, ctx: ddp.DistContext, ls, out: Path, console) -> None:
        import torch

        self.cfg, self.ctx, self.ls, self.out, self.console = cfg, ctx, ls, out, console
        self.device = ctx.device
        use_amp = cfg.amp if cfg.amp is not None else self.device.startswith("cuda")
        if use_amp:
            self.amp_dtype = torch.float16 if self.device.startswith("cuda") else torch.bfloat16
        else:
            self.amp_dtype = None
        self.train_ls = ls.split("train")
        self.val_ls = ls.split("val")
        self.test_ls = ls.split("test")
        self._inputs: dict[tuple, EvalInputs] = {}

    def inputs(self, split: str, meta: ModelMeta) -> EvalInputs:
        """This rank's shard of a split, preprocessed once per (split, input size, mean, std)."""
        key = (split, tuple(meta.input_size), tuple(meta.mean), tuple(meta.std), meta.channel_order)
        if key not in self._inputs:
            part = self.val_ls if split == "val" else self.test_ls
            self._inputs[key] = EvalInputs(part, meta, batch_size=max(self.cfg.batch_size, 64),
                                           indices=ddp.shard_indices(len(part), self.ctx))
        return self._inputs[key]

    def predict(self, model, split: str, meta: ModelMeta) -> np.ndarray:
        """Logits of the whole split (gathered over ranks, in order)."""
        inp = self.inputs(split, meta)
        rows = predict_logits(model, inp, device=self.device, amp_dtype=self.amp_dtype)
        return ddp.gather_rows(self.ctx, rows, len(inp.ls))

    def evaluate(self, model, split: str, meta: ModelMeta) -> tuple[dict, np.ndarray]:
        logits = self.predict(model, split, meta)
        part = self.val_ls if split == "val" else self.test_ls
        return evaluate_logits(logits, meta, part.labels, part.subclasses, part.subclass_names), logits

    def log(self, record: dict) -> None:
        if self.ctx.is_main:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _model_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def _loader(env: _Env, meta: ModelMeta, epoch_seed: int):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    from edgeskd.data.torch_dataset import ImageDataset

    cfg, ctx = env.cfg, env.ctx
    # augmentation is seeded per (seed, epoch, item): identical with any worker count and on --resume
    ds = ImageDataset(env.train_ls, meta.input_size, meta.mean, meta.std, train=cfg.augment, target="subclass",
                      seed=epoch_seed)
    if ctx.distributed:
        sampler = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=epoch_seed, drop_last=True)
    else:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(epoch_seed))
    per_rank = len(ds) // ctx.world_size
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      drop_last=per_rank > cfg.batch_size, pin_memory=env.device.startswith("cuda"),
                      persistent_workers=False)


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _check_resume_config(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    old = (ckpt.get("config") or {}).get("fingerprint")
    new = cfg.fingerprint()
    if old is None:
        raise UsageError(f"--resume: {path} has no training settings recorded; start a new run with a new --out")
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        k = diff[0]
        raise UsageError(f"--resume: {path} was trained with {k.replace('_', '-')}={old.get(k)!r}, now "
                         f"{new[k]!r}; resume with the same options or use a new --out")


def fit(env: _Env, job: Job, seed: int, run_dir: Path) -> FitResult:
    """Train one model (or pick up its finished/last checkpoint under --resume); best val F1 wins."""
    import torch

    from edgeskd.models.checkpoint import load_checkpoint, save_checkpoint
    from edgeskd.models.registry import count_parameters, create_model

    cfg, ctx = env.cfg, env.ctx
    final_path = run_dir / f"{job.name}.pt"
    last_path = run_dir / f"{job.name}.last.pt"
    _seed_everything(_model_seed(seed, job.name))
    model = create_model(job.arch, job.meta.num_outputs, pretrained=job.pretrained).to(env.device)
    params = count_parameters(model)
    ckpt_config = {"train": cfg.to_dict(), "fingerprint": cfg.fingerprint(), "seed": seed}

    if cfg.resume and final_path.is_file():  # finished in an earlier run
        ck = load_checkpoint(final_path)
        _check_resume_config(ck, cfg, final_path)
        model.load_state_dict(ck["state_dict"])
        m = ck["metrics"]
        env.console_print(f"{job.name} (seed {seed}): finished earlier, loaded {final_path}")
        test, test_logits = env.evaluate(model, "test", job.meta)
        return FitResult(model.eval(), job.meta, m.get("val", {}), test, int(ck.get("epoch", 0)),
                         list(m.get("history", [])), params, test_logits, final_path)

    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=job.lr)
    start_epoch, best_score, best_epoch, best_state, best_val = 0, (-1.0, -1.0), -1, None, {}
    history: list[dict] = []
    resumed = None
    if cfg.resume and last_path.is_file():
        resumed = load_checkpoint(last_path)
        _check_resume_config(resumed, cfg, last_path)
        model.load_state_dict(resumed["state_dict"])
        ts = resumed.get("train_state") or {}
        opt.load_state_dict(ts["optimizer"])
        start_epoch = int(resumed["epoch"]) + 1
        best_score = tuple(ts["best_score"])
        best_epoch, best_state, best_val = int(ts["best_epoch"]), ts["best_state"], ts["best_val"]
        history = list(ts["history"])
        env.console_print(f"{job.name} (seed {seed}): resuming after epoch {start_epoch} from {last_path}")

    train_model = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[torch.device(env.device).index] if env.device.startswith("cuda") else None)

    loader = _loader(env, job.meta, _model_seed(seed, job.name))
    steps_per_epoch = max(1, len(loader))
    total_steps = job.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch) if job.epochs > 1 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total_steps, warmup))
    if resumed is not None:
        sched.load_state_dict(resumed["train_state"]["scheduler"])
    use_scaler = env.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    if resumed is not None and use_scaler and resumed["train_state"].get("scaler"):
        scaler.load_state_dict(resumed["train_state"]["scaler"])
    teacher = job.teacher
    device_type = torch.device(env.device).type

    task = env.add_task(f"{job.name} s{seed}", total=total_steps, completed=start_epoch * steps_per_epoch)
    for epoch in range(start_epoch, job.epochs):
        t0 = time.perf_counter()
        epoch_seed = _model_seed(seed, job.name) + 7919 * (epoch + 1)
        _seed_everything(epoch_seed + ctx.rank)
        loader.dataset.set_epoch(epoch)
        if ctx.distributed:
            loader.sampler.set_epoch(epoch)
        else:
            loader.sampler.generator.manual_seed(epoch_seed)
        train_model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        for x, y, s in loader:
            x = x.to(env.device, non_blocking=True)
            y = y.to(env.device, non_blocking=True).long()
            s = s.to(env.device, non_blocking=True).long()
            with torch.autocast(device_type=device_type, dtype=env.amp_dtype or torch.float32,
                                enabled=env.amp_dtype is not None):
                out = train_model(x)
                t_out = None
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(x)
            parts = job.loss(out.float(), None if t_out is None else t_out.float(), y, s)
            loss = parts["loss"]
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{job.name}: loss became {loss.item()} at epoch {epoch + 1}; "
                                       "lower --lr (or --teacher-lr), or disable --amp")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_value = loss.item()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + (loss_value if k == "loss" else float(v))
            n_batches += 1
            env.advance(task, f"{job.name} s{seed} e{epoch + 1}/{job.epochs} loss {loss_value:.3f}")
        train_parts = ddp.all_reduce_mean(ctx, {k: v / max(1, n_batches) for k, v in sums.items()})

        val, _ = env.evaluate(model, "val", job.meta)
        score = (val["f1"], val["auc"] if val["auc"] is not None else -1.0)
        improved = score > best_score
        if improved:
            best_score, best_epoch, best_val = score, epoch, val
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        rec = {"model": job.name, "seed": seed, "epoch": epoch + 1, "epochs": job.epochs,
               **{f"train_{k}": round(v, 6) for k, v in train_parts.items()},
               "val_f1": val["f1"], "val_accuracy": val["accuracy"], "val_auc": val["auc"],
               "lr": opt.param_groups[0]["lr"], "best": improved,
               "time_s": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        env.log(rec)
        env.advance(task, f"{job.name} s{seed} e{epoch + 1}/{job.epochs} loss {train_parts['loss']:.3f} "
                          f"val F1 {val['f1']:.1f}", steps=0)
        if ctx.is_main:
            save_checkpoint(last_path, model, job.meta, config=ckpt_config, metrics={"val": val}, epoch=epoch,
                            train_state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                         "scaler": scaler.state_dict() if use_scaler else {},
                                         "best_score": list(best_score), "best_epoch": best_epoch,
                                         "best_state": best_state, "best_val": best_val,
                                         "history": history})

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    test, test_logits = env.evaluate(model, "test", job.meta)
    if ctx.is_main:
        save_checkpoint(final_path, model, job.meta, config=ckpt_config, epoch=best_epoch,
                        metrics={"val": best_val, "test": test, "history": history, "best_epoch": best_epoch + 1,
                                 "params": params})
        last_path.unlink(missing_ok=True)
    ddp.barrier(ctx)
    return FitResult(model, job.meta, best_val, test, best_epoch, history, params, test_logits, final_path)


def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _reuse_teacher(env: _Env, path: str, run_dir: Path, seed: int) -> FitResult:
    """--teacher-checkpoint: load, check against the data, evaluate on this data's splits."""
    from edgeskd.models.checkpoint import model_from_checkpoint, save_checkpoint
    from edgeskd.models.registry import count_parameters

    model, meta, ck = model_from_checkpoint(path)
    check_teacher_matches(meta, env.ls, env.cfg, path)
    model = model.to(env.device)
    val, _ = env.evaluate(model, "val", meta)
    test, logits = env.evaluate(model, "test", meta)
    hist = list((ck.get("metrics") or {}).get("history", []))
    out_path = run_dir / "teacher.pt"
    if env.ctx.is_main and Path(path).resolve() != out_path.resolve():
        save_checkpoint(out_path, model, meta, config={**(ck.get("config") or {}), "reused_from": str(path)},
                        metrics={"val": val, "test": test, "history": hist}, epoch=int(ck.get("epoch", 0)))
    ddp.barrier(env.ctx)
    return FitResult(model, meta, val, test, int(ck.get("epoch", 0)), hist, count_parameters(model), logits,
                     out_path, extra={"reused_from": str(path)})


def run_seed(env: _Env, seed: int, run_dir: Path) -> dict[str, FitResult]:
    cfg = env.cfg
    results: dict[str, FitResult] = {}
    if cfg.teacher_checkpoint:
        t = _reuse_teacher(env, cfg.teacher_checkpoint, run_dir, seed)
    else:
        tmeta = teacher_meta(env.ls, cfg)
        t = fit(env, Job("teacher", cfg.teacher, tmeta, make_loss("teacher", cfg, tmeta), cfg.teacher_epochs,
                         cfg.teacher_lr, cfg.pretrained), seed, run_dir)
    results["teacher"] = t
    teacher = _freeze(t.model)
    env.console_print(f"teacher (seed {seed}): test F1 {t.test['f1']:.2f}  val F1 {t.val.get('f1', float('nan')):.2f}")
    for mode in cfg.students:
        smeta = student_meta(mode, t.meta, env.ls, cfg)
        job = Job(f"student-{mode}", cfg.student, smeta, make_loss(mode, cfg, t.meta), cfg.epochs, cfg.lr,
                  cfg.student_pretrained, teacher if mode in ("kd", "skd") else None)
        r = fit(env, job, seed, run_dir)
        results[job.name] = r
        env.console_print(f"{job.name} (seed {seed}): test F1 {r.test['f1']:.2f}  val F1 {r.val.get('f1', float('nan')):.2f}")
    return results


# -- progress / console (rank 0 only) ------------------------------------------------------------
class _Reporter:
    def __init__(self, enabled: bool, console) -> None:
        self.enabled, self.console, self.progress = enabled, console, None

    def __enter__(self) -> "_Reporter":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=False)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)


def _attach_reporter(env: _Env, rep: _Reporter) -> None:
    """Give the fit loop its progress / console hooks (no-ops on ranks > 0 and without a console)."""

    def add_task(desc: str, total: int, completed: int = 0):
        return rep.progress.add_task(desc, total=total, completed=completed) if rep.progress else None

    def advance(task, desc: str, steps: int = 1) -> None:
        if rep.progress is not None and task is not None:
            rep.progress.update(task, advance=steps, description=desc)

    def console_print(msg: str) -> None:
        if env.ctx.is_main and rep.console is not None:
            (rep.progress.console if rep.progress else rep.console).print(msg, highlight=False)

    env.add_task, env.advance, env.console_print = add_task, advance, console_print  # type: ignore[attr-defined]


# -- entry point ----------------------------------------------------------------------------------
def _probe_writable(out: Path) -> None:
    """Fail early (before loading data or training) if OUT cannot be created/written; create nothing."""
    p = out
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise UsageError(f"cannot create output directory {out}: {p} is a file; choose a writable path")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {out} is not writable; choose a writable path")


def _resolve_out(cfg: TrainConfig, ctx: ddp.DistContext) -> Path:
    """Rank 0 picks OUT and checks it; every rank gets the same path (or the same error)."""
    result: tuple[str, str]
    if ctx.is_main:
        try:
            if cfg.resume and not cfg.out:
                raise UsageError("--resume needs --out DIR (the run to continue)")
            out = Path(cfg.out) if cfg.out else Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            if cfg.resume and not (out / "log.jsonl").is_file():
                raise UsageError(f"--resume: {out} holds no edgeskd training run (no log.jsonl); drop --resume "
                                 "or give the run's --out")
            if cfg.resume and cfg.overwrite:
                raise UsageError("--resume continues the run in --out, --overwrite replaces it: give one of them")
            if not cfg.resume and not cfg.overwrite and _run_files(out):
                raise UsageError(f"{out} already holds a training run; --resume continues it, --overwrite "
                                 "replaces it, or choose another --out")
            _probe_writable(out)
            result = ("ok", str(out))
        except UsageError as e:
            result = ("error", str(e))
    else:
        result = ("", "")
    result = ddp.broadcast_object(ctx, result)
    if result[0] == "error":
        raise UsageError(result[1])
    return Path(result[1])


_RUN_FILES = ("log.jsonl", "metrics.json", "report.md", "*.pt", "*.png", RUN_CONFIG_FILE)


def _run_files(out: Path) -> list[Path]:
    """The files a training run writes in OUT (and its seed-N folders); nothing else is touched."""
    if not out.is_dir():
        return []
    dirs = [out, *sorted(d for d in out.glob("seed-*") if d.is_dir())]
    return [f for d in dirs for pat in _RUN_FILES for f in sorted(d.glob(pat)) if f.is_file()]


def run_training(cfg: TrainConfig, *, console=None, argv: list[str] | None = None) -> dict[str, Any]:
    """Train the teacher and the students over ``cfg.seeds`` seeds; write OUT/; return metrics.json."""
    from edgeskd.distill import report

    cfg.validate()
    t_start = time.perf_counter()
    ctx = ddp.init_context(cfg.device)
    try:
        out = _resolve_out(cfg, ctx)
        ls = load_training_data(cfg)
        if ctx.is_main and console is not None:
            tr = ls.split("train")
            console.print(f"data: {ls.name} ({ls.format}) train {len(tr)} / val {int((ls.splits == 'val').sum())} / "
                          f"test {int((ls.splits == 'test').sum())}; classes {ls.class_names}; "
                          f"{ls.num_subclasses} subclasses; device {ctx.device}"
                          f"{f' x{ctx.world_size} ({ctx.backend})' if ctx.distributed else ''}; out {out}",
                          highlight=False)
        if cfg.teacher_checkpoint:  # fail before any training if the teacher does not fit
            from edgeskd.models.checkpoint import load_checkpoint

            check_teacher_matches(load_checkpoint(cfg.teacher_checkpoint)["meta"], ls, cfg, cfg.teacher_checkpoint)
        for w in (ls.info.get("warnings") or []) if ctx.is_main and console is not None else []:
            console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
        if ctx.is_main:  # everything checked: now create OUT
            ensure_writable_dir(out)
            if not cfg.resume:   # --overwrite (or a fresh OUT): nothing of an earlier run may mix in
                inputs = {Path(p).resolve() for p in (cfg.teacher_checkpoint, cfg.pretrained, cfg.student_pretrained) if p}
                for f in _run_files(out):
                    if f.resolve() not in inputs:   # a teacher reused from this very folder stays
                        f.unlink()
                write_json_atomic(out / RUN_CONFIG_FILE, cfg.to_dict())   # what --resume starts from
        ddp.barrier(ctx)
        env = _Env(cfg, ctx, ls, out, console)
        per_seed: dict[int, dict[str, FitResult]] = {}
        with _Reporter(cfg.progress and ctx.is_main and console is not None, console) as rep:
            _attach_reporter(env, rep)
            for seed in cfg.seed_list:
                run_dir = out if cfg.seeds == 1 else out / f"seed-{seed}"
                if ctx.is_main:
                    ensure_writable_dir(run_dir)
                ddp.barrier(ctx)
                per_seed[seed] = run_seed(env, seed, run_dir)
        metrics = report.summarize(per_seed, ls, cfg, label_bits=label_bits(ls), world_size=ctx.world_size,
                                   device=ctx.device, wall_time_s=time.perf_counter() - t_start,
                                   argv=argv if argv is not None else sys.argv)
        metrics["out"] = str(out)
        if ctx.is_main:
            report.write_outputs(out, metrics, per_seed, ls, cfg)
        ddp.barrier(ctx)
        return metrics
    finally:
        ddp.cleanup(ctx)
