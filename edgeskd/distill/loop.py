"""The epoch loop: train a group of models on the same batches, keep each one's best epoch.

``train_group`` takes the specs of one or more models (same input size and epochs), builds each
model with its optimizer (AdamW), LR schedule (linear warm-up, cosine to 1 %) and AMP scaler, and
trains them all on one data loader: each batch is prepared once (``prepare``, e.g. the teacher's
logits for distilling tasks) and then every model takes its step through its own task
(``parts = task(batch)``). After every epoch each model is validated, its best epoch kept (val
F1, AUC breaks ties), a line appended to ``OUT/log.jsonl`` and its ``.last.pt`` rewritten, so
``--resume`` continues after the last finished epoch. Augmentation and data order are seeded per
(group, epoch, item): the same with any number of workers and after a resume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeskd.distill import ddp
from edgeskd.distill.checkpointing import ModelFiles, Selection
from edgeskd.distill.context import RunContext, model_seed, seed_everything
from edgeskd.distill.progress import Reporter
from edgeskd.distill.tasks import Batch, Task
from edgeskd.errors import TrainingDiverged
from edgeskd.meta import ModelMeta

PrepareBatch = Callable[[Batch], Batch]


@dataclass
class ModelSpec:
    """What to train: a name (teacher | student-none | student-kd | student-skd, or a --tune cell
    such as student-kd@T2-a0.5), an architecture, what it predicts, its objective, and its budget.
    ``init_name`` seeds the initial weights (default: ``name``; the cells of one mode share it),
    ``folder`` is where its checkpoints go (default: the seed's run folder), ``record`` is stored in
    its checkpoints' config (e.g. the cell's T and α)."""

    name: str
    arch: str
    meta: ModelMeta
    task: Task
    epochs: int
    lr: float
    pretrained: str | None = None
    init_name: str | None = None
    folder: Path | None = None
    record: dict = field(default_factory=dict)


@dataclass
class TrainedModel:
    """A trained (or reloaded) model: the selected epoch's weights and its validation/test metrics."""

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


@dataclass
class Trainee:
    """One model while it trains."""

    spec: ModelSpec
    files: ModelFiles
    model: Any                      # the module (its state is what gets saved)
    train_model: Any                # the module the task calls (DDP-wrapped when distributed)
    optimizer: Any
    params: int
    selection: Selection = field(default_factory=Selection)
    next_epoch: int = 0
    resumed: dict | None = None     # the .last.pt this trainee continues from
    scheduler: Any = None
    scaler: Any = None
    bar: Any = None
    rng_state: Any = None           # its own torch RNG stream when it trains in a group
    sums: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def param_groups(model, weight_decay: float):
    """AdamW groups: weight decay on weights, none on biases and norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --augment policy → ImageDataset arguments
AUGMENT_ARGS: dict[str, dict[str, Any]] = {
    "endoscopy": dict(train=True),                           # flips, 90° rotations, colour jitter
    "flip": dict(train=True, jitter=0.0, rotate=False),      # flips only
    "none": dict(train=False),
}


class _WithIndex:
    """A dataset's items with their index appended: (x, class, subclass, view, index)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (*self.dataset[i], i)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def make_loader(ctx: RunContext, meta: ModelMeta, loader_seed: int):
    """The training split as augmented batches of (x, class, subclass, view, index), this rank's shard."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    from edgeskd.data.torch_dataset import ImageDataset

    cfg, dist = ctx.cfg, ctx.dist
    # augmentation is seeded per (seed, epoch, item): identical with any worker count and on --resume
    ds = _WithIndex(ImageDataset(ctx.train_split, meta.input_size, meta.mean, meta.std, target="subclass",
                                 seed=loader_seed, with_view=True, **AUGMENT_ARGS[cfg.augment]))
    if dist.distributed:
        sampler = DistributedSampler(ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                     seed=loader_seed, drop_last=True)
    else:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(loader_seed))
    per_rank = len(ds) // dist.world_size
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      drop_last=per_rank > cfg.batch_size, pin_memory=ctx.device.startswith("cuda"),
                      persistent_workers=False)


def _autocast_forward(module, ctx: RunContext) -> Callable:
    def forward(x):
        with ctx.autocast():
            return module(x)

    return forward


# -- building and finishing one model ------------------------------------------------------------
def _reload_finished(ctx: RunContext, spec: ModelSpec, files: ModelFiles, model, params: int,
                     reporter: Reporter, seed: int) -> TrainedModel | None:
    """--resume: a model finished by an earlier run is loaded and re-evaluated, not retrained."""
    ckpt = files.finished()
    if ckpt is None:
        return None
    model.load_state_dict(ckpt["state_dict"])
    metrics = ckpt["metrics"]
    reporter.print(f"{spec.name} (seed {seed}): finished earlier, loaded {files.final}")
    test, test_logits = ctx.evaluate(model, "test", spec.meta)
    return TrainedModel(model.eval(), spec.meta, metrics.get("val", {}), test, int(ckpt.get("epoch", 0)),
                        list(metrics.get("history", [])), params, test_logits, files.final)


def _build(ctx: RunContext, spec: ModelSpec, seed: int, run_dir: Path,
           reporter: Reporter) -> Trainee | TrainedModel:
    """A fresh model (seeded by run seed and name), or its state from an interrupted run."""
    import torch

    from edgeskd.models.registry import count_parameters, create_model

    files = ModelFiles(spec.folder or run_dir, spec.name, ctx.cfg, seed, record=spec.record)
    seed_everything(model_seed(seed, spec.init_name or spec.name))
    model = create_model(spec.arch, spec.meta.num_outputs, img_size=int(min(spec.meta.input_size)),
                         pretrained=spec.pretrained)
    model = model.to(ctx.device, memory_format=torch.channels_last)   # faster convolutions (oneDNN, tensor cores)
    params = count_parameters(model)
    done = _reload_finished(ctx, spec, files, model, params, reporter, seed)
    if done is not None:
        return done
    optimizer = torch.optim.AdamW(param_groups(model, ctx.cfg.weight_decay), lr=spec.lr)
    trainee = Trainee(spec, files, model, model, optimizer, params)
    resumed = files.interrupted()
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        state = resumed.get("train_state") or {}
        trainee.next_epoch = int(resumed["epoch"]) + 1
        trainee.selection = Selection.from_state(state)
        trainee.resumed = resumed
        reporter.print(f"{spec.name} (seed {seed}): resuming after epoch {trainee.next_epoch} from {files.last}")
    if ctx.dist.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(ctx.device).index] if ctx.device.startswith("cuda") else None
        trainee.train_model = DDP(model, device_ids=ids)
    spec.task.bind(_autocast_forward(trainee.train_model, ctx))
    return trainee


def _add_schedule(ctx: RunContext, t: Trainee, steps_per_epoch: int) -> None:
    """LR schedule and AMP gradient scaler (restored under --resume)."""
    import torch

    total_steps = t.spec.epochs * steps_per_epoch
    warmup = int(ctx.cfg.warmup_epochs * steps_per_epoch) if t.spec.epochs > 1 else 0
    t.scheduler = torch.optim.lr_scheduler.LambdaLR(t.optimizer, lambda s: lr_factor(s, total_steps, warmup))
    use_scaler = ctx.amp_dtype == torch.float16
    t.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    if t.resumed is not None:
        state = t.resumed["train_state"]
        # after the scheduler is built: building it sets every group's lr to the step-0 value,
        # and the saved optimizer state carries the lr of the next step
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        if use_scaler and state.get("scaler"):
            t.scaler.load_state_dict(state["scaler"])
        t.resumed = None


def _finish(ctx: RunContext, t: Trainee) -> TrainedModel:
    """The best epoch's weights, evaluated on test and saved as <name>.pt."""
    sel, meta = t.selection, t.spec.meta
    if sel.best_state is not None:
        t.model.load_state_dict(sel.best_state)
    t.model.eval()
    test, test_logits = ctx.evaluate(t.model, "test", meta)
    if ctx.dist.is_main:
        t.files.save_final(t.model, meta, sel.best_epoch,
                           metrics={"val": sel.best_val, "test": test, "history": sel.history,
                                    "best_epoch": sel.best_epoch + 1, "params": t.params})
    ddp.barrier(ctx.dist)
    return TrainedModel(t.model, meta, sel.best_val, test, sel.best_epoch, sel.history, t.params, test_logits,
                        t.files.final)


# -- one step, one epoch ---------------------------------------------------------------------------
def _rng_state(device: str):
    import torch

    cuda = torch.cuda.get_rng_state(device) if device.startswith("cuda") else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: str) -> None:
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _step(t: Trainee, batch: Batch, epoch: int, seed: int, reporter: Reporter, device: str,
          dist: ddp.DistContext) -> None:
    if t.rng_state is not None:   # in a group: its own random stream (dropout), whatever else trains
        _set_rng_state(t.rng_state, device)
    parts = t.spec.task(batch)
    loss = parts["loss"]
    bad = ddp.nonfinite_ranks(dist, loss)   # every rank learns of it, so all stop at this step
    if bad:
        value = f"non-finite on rank {', '.join(map(str, bad))}" if dist.distributed else str(loss.item())
        raise TrainingDiverged(f"{t.spec.name}: loss became {value} at epoch {epoch + 1}; "
                               "lower --lr (or --teacher-lr), or disable --amp")
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()
    if t.rng_state is not None:
        t.rng_state = _rng_state(device)
    loss_value = loss.item()
    for k, v in parts.items():
        t.sums[k] = t.sums.get(k, 0.0) + (loss_value if k == "loss" else float(v))
    t.batches += 1
    reporter.advance(t.bar, f"{t.spec.name} s{seed} e{epoch + 1}/{t.spec.epochs} loss {loss_value:.3f}")


@dataclass
class EpochTimes:
    """Seconds of one epoch that the models of a group share: loading batches, preparing them
    (the teacher's forward pass, for the distilling models only)."""

    data_s: float = 0.0
    prepare_s: float = 0.0
    models: int = 1
    preparing_for: int = 0
    teacher_pass_s: float = 0.0     # a one-off teacher pass before the epochs (clean targets), whole

    def share(self, t: Trainee) -> float:
        prep = self.prepare_s / self.preparing_for if t.spec.task.uses_teacher and self.preparing_for else 0.0
        return self.data_s / max(1, self.models) + prep


def _end_epoch(ctx: RunContext, t: Trainee, epoch: int, seed: int, times: EpochTimes, reporter: Reporter) -> None:
    """Validate, keep the best epoch, log, and rewrite <name>.last.pt."""
    t0 = time.perf_counter()
    train_parts = ddp.all_reduce_mean(ctx.dist, {k: v / max(1, t.batches) for k, v in t.sums.items()})
    val, _ = ctx.evaluate(t.model, "val", t.spec.meta)
    improved = t.selection.offer(epoch, val, t.model)
    t.seconds += time.perf_counter() - t0
    rec = {"model": t.spec.name, "seed": seed, "epoch": epoch + 1, "epochs": t.spec.epochs,
           **{f"train_{k}": round(v, 6) for k, v in train_parts.items()},
           "val_f1": val["f1"], "val_accuracy": val["accuracy"], "val_auc": val["auc"],
           "lr": t.optimizer.param_groups[0]["lr"], "best": improved,
           # its own steps and validation + its share of loading (and of the teacher's pass, if it distils)
           "time_s": round(t.seconds + times.share(t), 3), "own_s": round(t.seconds, 3),
           "group_data_s": round(times.data_s, 3), "group_teacher_s": round(times.prepare_s, 3)}
    if times.teacher_pass_s and t.spec.task.uses_teacher:
        rec["teacher_pass_s"] = round(times.teacher_pass_s, 3)   # (its 1/epochs share is in group_teacher_s)
    t.selection.history.append(rec)
    ctx.log(rec)
    reporter.advance(t.bar, f"{t.spec.name} s{seed} e{epoch + 1}/{t.spec.epochs} loss {train_parts['loss']:.3f} "
                            f"val F1 {val['f1']:.1f}", steps=0)
    if ctx.dist.is_main:
        t.files.save_last(t.model, t.spec.meta, epoch, val,
                          {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                           "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else {},
                           **t.selection.to_state()})
    t.next_epoch = epoch + 1


def _run_epoch(ctx: RunContext, loader, active: list[Trainee], epoch: int, seed: int,
               prepare: PrepareBatch | None, reporter: Reporter) -> EpochTimes:
    """One pass over the loader, every active model stepping on each batch (prepared once)."""
    import torch

    device = ctx.device
    grouped = len(active) > 1
    tick = time.perf_counter()
    batches = iter(loader)   # (draws the loader's base seed from the torch RNG)
    for t in active:
        t.train_model.train()
        t.sums, t.batches, t.seconds = {}, 0, 0.0
        # in a group each model gets the stream a model trained alone would have
        t.rng_state = _rng_state(device) if grouped else None
    times = EpochTimes(models=len(active), preparing_for=sum(t.spec.task.uses_teacher for t in active))
    for x, y, s, v, i in batches:
        batch = Batch(x.to(device, non_blocking=True, memory_format=torch.channels_last),
                      y.to(device, non_blocking=True).long(), s.to(device, non_blocking=True).long(), i, views=v)
        now = time.perf_counter()
        times.data_s += now - tick
        if prepare is not None:
            batch = prepare(batch)
            times.prepare_s += time.perf_counter() - now
        for t in active:
            t0 = time.perf_counter()
            _step(t, batch, epoch, seed, reporter, device, ctx.dist)
            t.seconds += time.perf_counter() - t0
        tick = time.perf_counter()
    for t in active:
        t.rng_state = None
    return times


def _seed_epoch(ctx: RunContext, loader, group_seed: int, epoch: int) -> None:
    """Augmentation, data order and the torch RNG of this epoch, from (group seed, epoch) alone."""
    epoch_seed = group_seed + 7919 * (epoch + 1)
    seed_everything(epoch_seed + ctx.dist.rank)
    loader.dataset.set_epoch(epoch)
    if ctx.dist.distributed:
        loader.sampler.set_epoch(epoch)
    else:
        loader.sampler.generator.manual_seed(epoch_seed)


def train_group(ctx: RunContext, specs: list[ModelSpec], seed: int, run_dir: Path, reporter: Reporter, *,
                data_name: str | None = None, prepare: PrepareBatch | None = None) -> dict[str, TrainedModel]:
    """Train ``specs`` together on the same batches (or reload them under --resume); return each
    model's selected epoch, evaluated on test. ``data_name`` names the data order (default: the
    single model's name); ``prepare`` runs once per batch before the models' steps, when one of
    them needs it (``task.uses_teacher``)."""
    if len({s.epochs for s in specs}) != 1:
        raise ValueError("models trained together need the same number of epochs")
    built = {s.name: _build(ctx, s, seed, run_dir, reporter) for s in specs}
    trainees = [t for t in built.values() if isinstance(t, Trainee)]
    if trainees:
        group_seed = model_seed(seed, data_name or specs[0].name)
        loader = make_loader(ctx, specs[0].meta, group_seed)
        steps_per_epoch = max(1, len(loader))
        for t in trainees:
            _add_schedule(ctx, t, steps_per_epoch)
            t.bar = reporter.add_bar(f"{t.spec.name} s{seed}", total=t.spec.epochs * steps_per_epoch,
                                     completed=t.next_epoch * steps_per_epoch)
        for epoch in range(min(t.next_epoch for t in trainees), specs[0].epochs):
            active = [t for t in trainees if t.next_epoch <= epoch]   # a model saved further on waits
            _seed_epoch(ctx, loader, group_seed, epoch)
            needed = prepare if any(t.spec.task.uses_teacher for t in active) else None
            times = _run_epoch(ctx, loader, active, epoch, seed, needed, reporter)
            if needed is not None:   # a one-off teacher pass (clean targets), shared out over the epochs
                times.teacher_pass_s = getattr(needed, "setup_s", 0.0)
                times.prepare_s += times.teacher_pass_s / specs[0].epochs
            for t in active:
                _end_epoch(ctx, t, epoch, seed, times, reporter)
    return {name: (_finish(ctx, b) if isinstance(b, Trainee) else b) for name, b in built.items()}
