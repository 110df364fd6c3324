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

import shutil
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeskd.distill import clinical_report, ddp
from edgeskd.distill import tune
from edgeskd.distill.checkpointing import link_or_copy
from edgeskd.distill.config import DISTILLED_MODES, RUN_CONFIG_FILE, TrainConfig
from edgeskd.distill.context import RunContext
from edgeskd.distill.data import label_bits, load_training_data, load_training_data_for, positive_class  # noqa: F401 (re-export)
from edgeskd.distill.loop import ModelSpec, TrainedModel, train_group
from edgeskd.distill.metas import check_teacher_matches, student_meta, teacher_meta
from edgeskd.distill.prefetch import check_models
from edgeskd.distill.progress import Reporter
from edgeskd.distill.tracking import TB_DIR
from edgeskd.distill.tasks import TeacherOutputs, make_task
from edgeskd.distill.tune import cell_name
from edgeskd.errors import TrainingDiverged, UsageError  # noqa: F401 (re-export)
from edgeskd.utils.io import ensure_writable_dir, probe_writable_dir, write_json_atomic


# -- one seed ---------------------------------------------------------------------------------------
def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _reuse_teacher(ctx: RunContext, path: str, run_dir: Path) -> TrainedModel:
    """--teacher-checkpoint: load, check against the data, evaluate on this data's splits."""
    import torch

    from edgeskd.models.checkpoint import model_from_checkpoint, save_checkpoint
    from edgeskd.models.registry import count_parameters

    model, meta, ck = model_from_checkpoint(path)
    check_teacher_matches(meta, ctx.dataset, ctx.cfg, path)
    model = model.to(ctx.device, memory_format=torch.channels_last)
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
    val = f"val F1 {r.val.get('f1', float('nan')):.2f}"
    if "@" in name:   # a --tune cell: its test F1 stays out of sight until the choice is made
        reporter.print(f"{name} (seed {seed}): {val}")
    else:
        reporter.print(f"{name} (seed {seed}): test F1 {r.test['f1']:.2f}  {val}")


def student_specs(ctx: RunContext, tmeta, run_dir: Path) -> list[ModelSpec]:
    """One spec per student mode; under --tune one per (T, α) cell for kd and skd (in run_dir/tune/)."""
    cfg = ctx.cfg
    specs = []
    for mode in cfg.students:
        base = f"student-{mode}"
        meta = student_meta(mode, tmeta, ctx.dataset, cfg)
        if mode not in DISTILLED_MODES:
            specs.append(ModelSpec(base, cfg.student, meta, make_task(mode, cfg, tmeta), cfg.epochs, cfg.lr,
                                   cfg.student_pretrained))
            continue
        for t, a in cfg.cells_for(mode):
            cell = replace(cfg, temperature=t, alpha=a)
            specs.append(ModelSpec(cell_name(mode, t, a) if cfg.tune else base, cfg.student, meta,
                                   make_task(mode, cell, tmeta), cfg.epochs, cfg.lr, cfg.student_pretrained,
                                   init_name=base, folder=run_dir / "tune" if cfg.tune else None,
                                   record={"distillation": {"temperature": t, "alpha": a, "tuned": cfg.tune}}))
    return specs


def teacher_outputs(ctx: RunContext, t: TrainedModel, specs: list[ModelSpec], run_dir: Path) -> TeacherOutputs:
    """What the distilled students are taught (--teacher-targets): ``clean`` computes the frozen
    teacher's logits of every training image once, un-augmented (skipped when no student distils
    or every one finished earlier); ``augmented`` forwards each batch's augmented view, cached per
    item and view."""
    import torch

    teacher = _freeze(t.model)
    if ctx.cfg.teacher_targets == "augmented":
        return TeacherOutputs(teacher, ctx.autocast, cache=True)
    pending = [s for s in specs if s.task.uses_teacher
               and not (ctx.cfg.resume and (s.folder or run_dir).joinpath(f"{s.name}.pt").is_file())]
    if not pending:
        return TeacherOutputs(teacher, ctx.autocast)
    t0 = time.perf_counter()
    table = torch.from_numpy(ctx.predict(teacher, "train", t.meta)).to(ctx.device)
    return TeacherOutputs(teacher, ctx.autocast, table=table, setup_s=time.perf_counter() - t0)


def run_seed(ctx: RunContext, seed: int, run_dir: Path, reporter: Reporter) -> dict[str, TrainedModel]:
    """The teacher (trained or reused), then every student of the seed, trained together on the
    same batches; the distilled ones are taught per --teacher-targets (``teacher_outputs``)."""
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
    _announce(reporter, "teacher", seed, t)
    if cfg.tune and ctx.dist.is_main:
        ensure_writable_dir(run_dir / "tune")
    ddp.barrier(ctx.dist)
    specs = student_specs(ctx, t.meta, run_dir)
    students = train_group(ctx, specs, seed, run_dir, reporter, data_name="students",
                           prepare=teacher_outputs(ctx, t, specs, run_dir))
    for name, r in students.items():
        clinical_report.calibrate_student(ctx, r)   # temperature + threshold into r.meta and its checkpoint
        results[name] = r
        _announce(reporter, name, seed, r)
    return results


def settle_tuning(ctx: RunContext, per_seed: dict[int, dict[str, TrainedModel]],
                  run_dirs: dict[int, Path]) -> dict[str, Any] | None:
    """--tune: choose each distilled mode's (T, α) on validation; its students become student-<mode>
    (their checkpoints are placed at <run dir>/student-<mode>.pt) and the cells leave ``per_seed``."""
    cfg = ctx.cfg
    if not cfg.tune:
        return None
    modes: dict[str, Any] = {}
    for mode in (m for m in cfg.students if m in DISTILLED_MODES):
        grid = {(t, a): [per_seed[s][cell_name(mode, t, a)] for s in per_seed] for t, a in cfg.tune_grid}
        (t, a), rows = tune.choose(grid)
        modes[mode] = {"grid": rows, "chosen": {"temperature": t, "alpha": a, "name": cell_name(mode, t, a),
                                                "val_f1": next(r["val_f1"] for r in rows
                                                               if (r["temperature"], r["alpha"]) == (t, a))}}
        for s, results in per_seed.items():
            chosen = results[cell_name(mode, t, a)]
            dst = run_dirs[s] / f"student-{mode}.pt"
            if ctx.dist.is_main and chosen.path is not None:
                link_or_copy(chosen.path, dst)
            results[f"student-{mode}"] = replace(chosen, path=dst, extra={**chosen.extra, "temperature": t, "alpha": a})
    for results in per_seed.values():
        for name in [n for n in results if "@" in n]:
            del results[name]
    ddp.barrier(ctx.dist)
    return {"selection": tune.SELECTION, "split": "val", "temperatures": list(cfg.tune_temperatures),
            "alphas": list(cfg.tune_alphas), "modes": modes}


# -- the output folder -------------------------------------------------------------------------------
def _check_out(cfg: TrainConfig) -> Path:
    if cfg.resume and not cfg.out:
        raise UsageError("--resume needs --out DIR (the run to continue)")
    out = Path(cfg.out) if cfg.out else Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if cfg.resume and not (out / "log.jsonl").is_file():
        raise UsageError(f"--resume: {out} holds no edgeskd training run (no log.jsonl); drop --resume "
                         "or give the run's --out")
    if cfg.resume and cfg.overwrite:
        raise UsageError("--resume continues the run in --out, --overwrite replaces it: give one of them")
    if not cfg.resume and not cfg.overwrite and [f for f in _run_files(out) if f.name != RUN_CONFIG_FILE]:
        # (settings alone = a run that stopped before its first result: nothing to protect)
        raise UsageError(f"{out} already holds a training run; --resume continues it, --overwrite "
                         "replaces it, or choose another --out")
    probe_writable_dir(out)   # before loading data or training; creates nothing
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
    dirs += [d / "tune" for d in dirs if (d / "tune").is_dir()]   # --tune's grid cells
    return [f for d in dirs for pat in _RUN_FILES for f in sorted(d.glob(pat)) if f.is_file()]


def _prepare_out(cfg: TrainConfig, out: Path) -> None:
    """Create OUT; a fresh run (or --overwrite) removes an earlier run's files and records its settings."""
    ensure_writable_dir(out)
    if not cfg.resume:   # --overwrite (or a fresh OUT): nothing of an earlier run may mix in
        inputs = {Path(p).resolve() for p in (cfg.teacher_checkpoint, cfg.pretrained, cfg.student_pretrained) if p}
        for f in _run_files(out):
            if f.resolve() not in inputs:   # a teacher reused from this very folder stays
                f.unlink()
        shutil.rmtree(out / TB_DIR, ignore_errors=True)   # an earlier run's TensorBoard events
        write_json_atomic(out / RUN_CONFIG_FILE, cfg.to_dict())   # what --resume starts from


# -- the run ---------------------------------------------------------------------------------------
def _load_and_check(cfg: TrainConfig, dist: ddp.DistContext, out: Path, reporter: Reporter):
    """The data, checked (and a reused teacher checked against it) before anything is written."""
    teacher = None
    if cfg.teacher_checkpoint:   # an unreadable file fails before the data is loaded
        from edgeskd.models.checkpoint import load_checkpoint

        teacher = load_checkpoint(cfg.teacher_checkpoint)["meta"]
    model_warnings = check_models(cfg, dist)   # weights found or fetched (else one line), INT8 check
    dataset = load_training_data(cfg)
    tr = dataset.split("train")
    reporter.print(f"data: {dataset.name} ({dataset.format}) train {len(tr)} / val "
                   f"{int((dataset.splits == 'val').sum())} / test {int((dataset.splits == 'test').sum())}; "
                   f"classes {dataset.class_names} (positive: {dataset.class_names[positive_class(dataset)]}); "
                   f"{dataset.num_subclasses} subclasses; device {dist.device}"
                   f"{f' x{dist.world_size} ({dist.backend})' if dist.distributed else ''}; out {out}")
    if teacher is not None:  # fail before any training if the teacher does not fit
        check_teacher_matches(teacher, dataset, cfg, cfg.teacher_checkpoint)
    for w in [*(dataset.info.get("warnings") or []), *model_warnings]:
        reporter.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    warnings = []   # warnings about this run's results, kept in metrics.json and report.md
    n_val = int((dataset.splits == "val").sum())
    if cfg.tune and n_val < tune.NOISY_BELOW:
        warnings.append(f"--tune chooses T and α on {n_val} validation images (fewer than {tune.NOISY_BELOW}): "
                        "the choice is noisy")
    for w in warnings:
        reporter.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    return dataset, warnings


def run_training(cfg: TrainConfig, *, console=None, argv: list[str] | None = None,
                 mlflow_uri: str | None = None) -> dict[str, Any]:
    """Train the teacher and the students over ``cfg.seeds`` seeds; write OUT/; return metrics.json.
    TensorBoard / MLflow (``mlflow_uri`` or MLFLOW_TRACKING_URI) follow it when available (``tracking``)."""
    from edgeskd.distill.tracking import Tracker
    from edgeskd.distill import report

    cfg.validate()
    t_start = time.perf_counter()
    dist = ddp.init_context(cfg.device)
    try:
        out = _resolve_out(cfg, dist)
        with Reporter(console, progress=cfg.progress, is_main=dist.is_main) as reporter:
            dataset, run_warnings = _load_and_check(cfg, dist, out, reporter)
            if dist.is_main:  # everything checked: now create OUT
                _prepare_out(cfg, out)
            ddp.barrier(dist)
            tracker = Tracker(out, cfg.to_dict(), mlflow_uri=mlflow_uri, enabled=dist.is_main,
                              warn=lambda w: reporter.print(f"[yellow]warning:[/] {w}", soft_wrap=True))
            ctx = RunContext(cfg, dist, dataset, out, tracker=tracker)
            per_seed: dict[int, dict[str, TrainedModel]] = {}
            run_dirs = {seed: out if cfg.seeds == 1 else out / f"seed-{seed}" for seed in cfg.seed_list}
            for seed, run_dir in run_dirs.items():
                if dist.is_main:
                    ensure_writable_dir(run_dir)
                ddp.barrier(dist)
                per_seed[seed] = run_seed(ctx, seed, run_dir, reporter)
            tuning = settle_tuning(ctx, per_seed, run_dirs)
            for mode, t in (tuning or {}).get("modes", {}).items():
                ch = t["chosen"]
                reporter.print(f"--tune student-{mode}: T = {ch['temperature']:g}, α = {ch['alpha']:g} "
                               f"(mean val F1 {ch['val_f1']:.2f} over {len(per_seed)} seed(s))")
        metrics = report.summarize(per_seed, dataset, cfg, label_bits=label_bits(dataset),
                                   world_size=dist.world_size, device=dist.device,
                                   wall_time_s=time.perf_counter() - t_start,
                                   argv=argv if argv is not None else sys.argv, tuning=tuning, warnings=run_warnings)
        clinical_report.add_to_metrics(metrics, per_seed, dataset)
        metrics["out"] = str(out)
        metrics["tracking"] = tracker.active
        if dist.is_main:
            report.write_outputs(out, metrics, per_seed, dataset, cfg)
            tracker.finish(out, metrics)
        ddp.barrier(dist)
        return metrics
    except BaseException:
        if "tracker" in locals():
            tracker.fail()
        raise
    finally:
        ddp.cleanup(dist)
