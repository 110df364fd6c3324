"""The training run: teacher on subclasses → students (plain, KD, SKD), over seeds, with DDP.

``run_training(TrainConfig) -> dict`` is the library entry point (``edgeskd train``, quickstart).
It returns what it writes to ``OUT/metrics.json``.

Per seed: the teacher is trained on the known subclasses (CE on subclass labels) or on K invented
subclasses per class (CE on the logsumexp class logits + β·L_aux), then frozen (eval mode,
``requires_grad=False``, forward without autograd) and each student mode is trained:

* ``none`` — C class logits, CE on class labels;
* ``kd``   — C class logits, distilled from the teacher's logsumexp class logits;
* ``skd``  — one logit per teacher subclass, distilled from the teacher's subclass logits.

Model selection: the epoch with the best validation F1 (AUC breaks ties); the reported numbers are
that model on the test split, evaluated through the runtime's ``preprocess_for`` on un-augmented
images (what ``edgeskd bench`` measures). Every epoch appends a line to ``OUT/log.jsonl`` and
atomically rewrites ``<model>.last.pt`` (weights + optimizer/scheduler/best state), so ``--resume``
continues from the last finished epoch and Ctrl-C never damages a checkpoint.

The parts: ``data`` (loading and checking the data), ``metas`` (what each model predicts),
``tasks`` (each model's objective), ``loop`` (the epochs), ``checkpointing`` (files and resume
state), ``progress`` (bars and console lines), ``report`` (metrics.json, report.md, plots).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeskd.distill import clinical_report, ddp
from edgeskd.distill.config import RUN_CONFIG_FILE, TrainConfig
from edgeskd.distill.context import RunContext
from edgeskd.distill.data import label_bits, load_training_data, load_training_data_for  # noqa: F401 (re-export)
from edgeskd.distill.loop import ModelSpec, TrainedModel, train_group
from edgeskd.distill.metas import check_teacher_matches, student_meta, teacher_meta
from edgeskd.distill.progress import Reporter
from edgeskd.distill.tasks import TeacherOutputs, make_task
from edgeskd.errors import TrainingDiverged, UsageError  # noqa: F401 (re-export)
from edgeskd.utils.io import ensure_writable_dir, write_json_atomic


# -- one seed ---------------------------------------------------------------------------------------
def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _reuse_teacher(ctx: RunContext, path: str, run_dir: Path) -> TrainedModel:
    """--teacher-checkpoint: load, check against the data, evaluate on this data's splits."""
    from edgeskd.models.checkpoint import model_from_checkpoint, save_checkpoint
    from edgeskd.models.registry import count_parameters

    model, meta, ck = model_from_checkpoint(path)
    check_teacher_matches(meta, ctx.dataset, ctx.cfg, path)
    model = model.to(ctx.device)
    val, _ = ctx.evaluate(model, "val", meta)
    test, logits = ctx.evaluate(model, "test", meta)
    hist = list((ck.get("metrics") or {}).get("history", []))
    out_path = run_dir / "teacher.pt"
    if ctx.dist.is_main and Path(path).resolve() != out_path.resolve():
        save_checkpoint(out_path, model, meta, config={**(ck.get("config") or {}), "reused_from": str(path)},
                        metrics={"val": val, "test": test, "history": hist}, epoch=int(ck.get("epoch", 0)))
    ddp.barrier(ctx.dist)
    return TrainedModel(model, meta, val, test, int(ck.get("epoch", 0)), hist, count_parameters(model), logits,
                        out_path, extra={"reused_from": str(path)})


def _announce(reporter: Reporter, name: str, seed: int, r: TrainedModel) -> None:
    reporter.print(f"{name} (seed {seed}): test F1 {r.test['f1']:.2f}  val F1 {r.val.get('f1', float('nan')):.2f}")


def run_seed(ctx: RunContext, seed: int, run_dir: Path, reporter: Reporter) -> dict[str, TrainedModel]:
    """The teacher (trained or reused) and every student mode of one seed."""
    cfg = ctx.cfg
    results: dict[str, TrainedModel] = {}
    if cfg.teacher_checkpoint:
        t = _reuse_teacher(ctx, cfg.teacher_checkpoint, run_dir)
    else:
        tmeta = teacher_meta(ctx.dataset, cfg)
        spec = ModelSpec("teacher", cfg.teacher, tmeta, make_task("teacher", cfg, tmeta), cfg.teacher_epochs,
                         cfg.teacher_lr, cfg.pretrained)
        t = train_group(ctx, [spec], seed, run_dir, reporter)["teacher"]
    results["teacher"] = t
    teacher_outputs = TeacherOutputs(_freeze(t.model), ctx.autocast)
    _announce(reporter, "teacher", seed, t)
    for mode in cfg.students:
        spec = ModelSpec(f"student-{mode}", cfg.student, student_meta(mode, t.meta, ctx.dataset, cfg),
                         make_task(mode, cfg, t.meta), cfg.epochs, cfg.lr, cfg.student_pretrained)
        r = train_group(ctx, [spec], seed, run_dir, reporter, prepare=teacher_outputs)[spec.name]
        clinical_report.calibrate_student(ctx, r)   # temperature + threshold into r.meta and its checkpoint
        results[spec.name] = r
        _announce(reporter, spec.name, seed, r)
    return results


# -- the output folder -------------------------------------------------------------------------------
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


def _check_out(cfg: TrainConfig) -> Path:
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
    return out


def _resolve_out(cfg: TrainConfig, dist: ddp.DistContext) -> Path:
    """Rank 0 picks OUT and checks it; every rank gets the same path (or the same error)."""
    result: tuple[str, str]
    if dist.is_main:
        try:
            result = ("ok", str(_check_out(cfg)))
        except UsageError as e:
            result = ("error", str(e))
    else:
        result = ("", "")
    result = ddp.broadcast_object(dist, result)
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


def _prepare_out(cfg: TrainConfig, out: Path) -> None:
    """Create OUT; a fresh run (or --overwrite) removes an earlier run's files and records its settings."""
    ensure_writable_dir(out)
    if not cfg.resume:   # --overwrite (or a fresh OUT): nothing of an earlier run may mix in
        inputs = {Path(p).resolve() for p in (cfg.teacher_checkpoint, cfg.pretrained, cfg.student_pretrained) if p}
        for f in _run_files(out):
            if f.resolve() not in inputs:   # a teacher reused from this very folder stays
                f.unlink()
        write_json_atomic(out / RUN_CONFIG_FILE, cfg.to_dict())   # what --resume starts from


# -- the run ---------------------------------------------------------------------------------------
def _load_and_check(cfg: TrainConfig, dist: ddp.DistContext, out: Path, reporter: Reporter):
    """The data, checked (and a reused teacher checked against it) before anything is written."""
    teacher = None
    if cfg.teacher_checkpoint:   # an unreadable file fails before the data is loaded
        from edgeskd.models.checkpoint import load_checkpoint

        teacher = load_checkpoint(cfg.teacher_checkpoint)["meta"]
    dataset = load_training_data(cfg)
    tr = dataset.split("train")
    reporter.print(f"data: {dataset.name} ({dataset.format}) train {len(tr)} / val "
                   f"{int((dataset.splits == 'val').sum())} / test {int((dataset.splits == 'test').sum())}; "
                   f"classes {dataset.class_names}; {dataset.num_subclasses} subclasses; device {dist.device}"
                   f"{f' x{dist.world_size} ({dist.backend})' if dist.distributed else ''}; out {out}")
    if teacher is not None:  # fail before any training if the teacher does not fit
        check_teacher_matches(teacher, dataset, cfg, cfg.teacher_checkpoint)
    for w in dataset.info.get("warnings") or []:
        reporter.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    return dataset


def run_training(cfg: TrainConfig, *, console=None, argv: list[str] | None = None) -> dict[str, Any]:
    """Train the teacher and the students over ``cfg.seeds`` seeds; write OUT/; return metrics.json."""
    from edgeskd.distill import report

    cfg.validate()
    t_start = time.perf_counter()
    dist = ddp.init_context(cfg.device)
    try:
        out = _resolve_out(cfg, dist)
        with Reporter(console, progress=cfg.progress, is_main=dist.is_main) as reporter:
            dataset = _load_and_check(cfg, dist, out, reporter)
            if dist.is_main:  # everything checked: now create OUT
                _prepare_out(cfg, out)
            ddp.barrier(dist)
            ctx = RunContext(cfg, dist, dataset, out)
            per_seed: dict[int, dict[str, TrainedModel]] = {}
            for seed in cfg.seed_list:
                run_dir = out if cfg.seeds == 1 else out / f"seed-{seed}"
                if dist.is_main:
                    ensure_writable_dir(run_dir)
                ddp.barrier(dist)
                per_seed[seed] = run_seed(ctx, seed, run_dir, reporter)
        metrics = report.summarize(per_seed, dataset, cfg, label_bits=label_bits(dataset),
                                   world_size=dist.world_size, device=dist.device,
                                   wall_time_s=time.perf_counter() - t_start,
                                   argv=argv if argv is not None else sys.argv)
        clinical_report.add_to_metrics(metrics, per_seed, dataset)
        metrics["out"] = str(out)
        if dist.is_main:
            report.write_outputs(out, metrics, per_seed, dataset, cfg)
        ddp.barrier(dist)
        return metrics
    finally:
        ddp.cleanup(dist)
