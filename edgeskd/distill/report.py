"""metrics.json, report.md and the PNG plots of a training run (rank 0 writes; all writes atomic)."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from edgeskd.distill import clinical_report
from edgeskd.distill.checkpointing import link_or_copy
from edgeskd.distill.config import AUGMENT_POLICIES, DEFAULT_TEMPERATURES, TEACHER_TARGETS
from edgeskd.utils.io import atomic_path, write_json_atomic, write_text_atomic

METRIC_KEYS = ("f1", "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "auc")
MODEL_ORDER = ("teacher", "student-none", "student-kd", "student-skd")
LABEL_BITS_FORMULA = "H(S) - H(C) = H(S | C), in bits, over the training split's labels"
# paired comparisons of test F1: key → (model a, model b), reported as a − b
COMPARISONS = {"skd-kd": ("student-skd", "student-kd"), "skd-none": ("student-skd", "student-none"),
               "kd-none": ("student-kd", "student-none")}
SHORT = {"student-skd": "SKD", "student-kd": "KD", "student-none": "plain", "teacher": "teacher"}


def _predicted_classes(r, test_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, predicted classes, positive class) of the test images that show a polyp, in the
    polyp-only indexing (all images, as they are, for a model without a background class): the
    HP-vs-adenoma argmax of the probabilities conditional on a polyp."""
    from edgeskd.runtime.polyp_view import polyp_view
    from edgeskd.runtime.postprocess import class_probabilities

    view = polyp_view(np.asarray(r.test_logits, dtype=np.float32), r.meta, test_labels)
    return view.labels, class_probabilities(view.logits, view.meta).argmax(axis=1), int(view.meta.positive_class)


def comparisons(per_seed: dict[int, dict[str, Any]], test_labels: np.ndarray, positive: int) -> dict[str, Any]:
    """Paired test-F1 differences SKD − KD, SKD − plain, KD − plain (those whose models ran): mean over
    seeds, per seed, and a 95 % paired bootstrap interval over test images pooled over seeds (with a
    "no polyp" class: over the test images that show a polyp, ``_predicted_classes``)."""
    from edgeskd.distill.stats import METHOD, paired_bootstrap_f1

    seeds = sorted(per_seed)
    out: dict[str, Any] = {}
    for key, (a, b) in COMPARISONS.items():
        runs = [per_seed[s] for s in seeds]
        if not all(a in r and b in r and r[a].test_logits is not None and r[b].test_logits is not None
                   for r in runs):
            continue
        pa = [_predicted_classes(r[a], test_labels) for r in runs]
        pb = [_predicted_classes(r[b], test_labels) for r in runs]
        res = paired_bootstrap_f1([p[0] for p in pa], [p[1] for p in pa], [p[1] for p in pb],
                                  positive=pa[0][2] if pa else positive)
        out[key] = {"a": a, "b": b, **res, "method": METHOD,
                    "seed_variance": "the interval resamples test images, not training seeds (see per_seed)"
                    if len(seeds) > 1 else "ignored: one seed, the interval covers test-image sampling only"}
    return out


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    mean = float(np.mean(v))
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return round(mean, 4), round(std, 4)


def epoch_seconds(per_seed: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Median seconds per epoch of each model (its own steps and validation, plus its share of data
    loading and, for a distilled student, of the teacher's forward pass), over epochs and seeds."""
    out: dict[str, float] = {}
    for name in MODEL_ORDER:
        times = [h["time_s"] for res in per_seed.values() if name in res for h in res[name].history
                 if h.get("time_s") is not None]
        if times:
            out[name] = round(float(np.median(times)), 3)
    return out


def summarize(per_seed: dict[int, dict[str, Any]], ls, cfg, *, label_bits: float, world_size: int = 1,
              device: str = "cpu", wall_time_s: float = 0.0, argv: list[str] | None = None,
              tuning: dict[str, Any] | None = None, warnings: list[str] | None = None) -> dict[str, Any]:
    """The metrics.json document: test-split numbers, mean over seeds (``*_std`` = sample std)."""
    seeds = sorted(per_seed)
    names = [n for n in MODEL_ORDER if n in per_seed[seeds[0]]]
    models: dict[str, Any] = {}
    for name in names:
        runs = [per_seed[s][name] for s in seeds]
        m: dict[str, Any] = {}
        for k in METRIC_KEYS:
            mean, std = _mean_std([r.test.get(k) for r in runs])
            m[k] = mean
            if len(seeds) > 1:
                m[f"{k}_std"] = std
        m["val_f1"], val_std = _mean_std([r.val.get("f1") for r in runs])
        if len(seeds) > 1:
            m["val_f1_std"] = val_std
        m["params"] = int(runs[0].params)
        m["arch"] = runs[0].meta.arch
        m["output"] = runs[0].meta.output
        subs = list(runs[0].test.get("per_subclass_accuracy", {}))
        m["per_subclass_accuracy"] = {s: _mean_std([r.test["per_subclass_accuracy"].get(s) for r in runs])[0]
                                      for s in subs}
        if "subclass_accuracy" in runs[0].test:
            m["subclass_accuracy"] = _mean_std([r.test.get("subclass_accuracy") for r in runs])[0]
        m["confusion"] = np.sum([np.asarray(r.test["confusion"]) for r in runs], axis=0).tolist()
        if runs[0].test.get("presence") is not None:   # a "no polyp" class: presence figures apart
            m["presence"] = {k: _mean_std([r.test["presence"].get(k) for r in runs])[0]
                             for k in ("sensitivity", "false_presence", "auc")}
            m["presence"].update(threshold=runs[0].test["presence"]["threshold"], split="test",
                                 n_polyp=runs[0].test["presence"]["n_polyp"],
                                 n_no_polyp=runs[0].test["presence"]["n_no_polyp"],
                                 per_seed=[r.test["presence"] for r in runs])
        m["best_epoch"] = [int(r.best_epoch) + 1 for r in runs]
        m["per_seed_f1"] = [r.test.get("f1") for r in runs]
        m["per_seed_val_f1"] = [r.val.get("f1") for r in runs]
        if "temperature" in runs[0].extra:   # chosen by --tune
            m["temperature"], m["alpha"] = runs[0].extra["temperature"], runs[0].extra["alpha"]
        m["checkpoint"] = runs[0].path.name if runs[0].path is not None else None
        models[name] = m
    tr = ls.split("train")
    counts = {n: int((tr.subclasses == i).sum()) for i, n in enumerate(ls.subclass_names)}
    teacher_params = models.get("teacher", {}).get("params")
    student_params = max((models[n]["params"] for n in names if n.startswith("student-")), default=None)
    return {
        "dataset": {
            "name": ls.name, "format": ls.format,
            "n_train": int((ls.splits == "train").sum()), "n_val": int((ls.splits == "val").sum()),
            "n_test": int((ls.splits == "test").sum()),
            "label_bits": round(float(label_bits), 4), "label_bits_formula": LABEL_BITS_FORMULA,
            "class_names": list(ls.class_names), "subclass_names": list(ls.subclass_names),
            "subclass_to_class": [int(v) for v in ls.subclass_to_class],
            "train_subclass_counts": counts,
            "positive_class": ls.class_names[runs[0].meta.positive_class] if names else None,
            "label_noise_rate": ls.info.get("label_noise_rate") if isinstance(ls.info, dict) else None,
        },
        "models": models,
        "comparisons": comparisons(per_seed, ls.split("test").labels,
                                   runs[0].meta.positive_class if names else 1),
        "tuning": tuning,
        "augment": {"policy": cfg.augment, "description": AUGMENT_POLICIES[cfg.augment]},
        "teacher_targets": {"policy": cfg.teacher_targets, "description": TEACHER_TARGETS[cfg.teacher_targets]},
        "epoch_seconds": epoch_seconds(per_seed),
        "warnings": list(warnings or []),
        "seeds": seeds,
        "split": "test",
        "selection": "best validation F1 (ties: AUC)",
        "units": "percent",
        "student_to_teacher_params": (round(student_params / teacher_params, 5)
                                      if teacher_params and student_params else None),
        "config": cfg.to_dict(),
        "world_size": world_size,
        "device": device,
        "wall_time_s": round(float(wall_time_s), 1),
        "command": shlex.join(argv) if argv else None,
    }


def _fmt(v: float | None, std: float | None = None, digits: int = 2) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{v:.{digits}f}"


def _header(metrics: dict[str, Any]) -> list[str]:
    ds = metrics["dataset"]
    lines = ["# edgeskd training report", "",
             f"Data: **{ds['name']}** ({ds['format']}), train {ds['n_train']} / val {ds['n_val']} / test "
             f"{ds['n_test']}; classes {', '.join(ds['class_names'])} (positive: {ds['positive_class']}); "
             f"{len(ds['subclass_names'])} subclasses.", "",
             f"Extra label bits per sample: **{ds['label_bits']:.4f} bits** = {ds['label_bits_formula']}.", ""]
    if ds.get("label_noise_rate") is not None:
        lines += [f"Label noise of the synthetic set (majority vote ≠ hidden true class): "
                  f"{100 * ds['label_noise_rate']:.1f} %.", ""]
    for w in metrics.get("warnings") or []:
        lines += [f"**Warning:** {w}.", ""]
    return lines


def _results(metrics: dict[str, Any]) -> list[str]:
    ds, models = metrics["dataset"], metrics["models"]
    n_seeds = len(metrics["seeds"])
    lines = [f"Test split, model selected on validation F1; {n_seeds} seed(s) {metrics['seeds']}"
             f"{' (mean ± sample std)' if n_seeds > 1 else ''}; metrics in percent; positive class "
             f"**{ds['positive_class']}**.", "",
             "| model | arch | params | F1 | accuracy | balanced acc. | precision | recall (sens.) | specificity "
             "| AUC | val F1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        sd = (lambda k: m.get(f"{k}_std")) if n_seeds > 1 else (lambda k: None)
        lines.append(f"| {name} | {m['arch']} | {m['params']:,} | **{_fmt(m['f1'], sd('f1'))}** | "
                     f"{_fmt(m['accuracy'], sd('accuracy'))} | {_fmt(m.get('balanced_accuracy'), sd('balanced_accuracy'))} | "
                     f"{_fmt(m['precision'], sd('precision'))} | {_fmt(m['recall'], sd('recall'))} | "
                     f"{_fmt(m.get('specificity'), sd('specificity'))} | {_fmt(m['auc'], sd('auc'))} | "
                     f"{_fmt(m['val_f1'], m.get('val_f1_std'))} |")
    lines += ["", "F1 counts the positive class only: a model that leans to it (high recall, low specificity) can "
              "gain F1 while its accuracy, balanced accuracy and AUC do not; read them together."]
    f1 = {n: m["f1"] for n, m in models.items() if m["f1"] is not None}
    lines.append("")
    if {"student-skd", "student-none"} <= set(f1):
        d = [f"SKD − plain: {f1['student-skd'] - f1['student-none']:+.2f} pts"]
        if "student-kd" in f1:
            d.append(f"SKD − KD: {f1['student-skd'] - f1['student-kd']:+.2f} pts")
            d.append(f"KD − plain: {f1['student-kd'] - f1['student-none']:+.2f} pts")
        if "teacher" in f1:
            d.append(f"teacher − plain: {f1['teacher'] - f1['student-none']:+.2f} pts")
        lines += ["F1 differences (mean): " + "; ".join(d) + ".", ""]
    if metrics.get("student_to_teacher_params"):
        lines += [f"Student / teacher parameters: {metrics['student_to_teacher_params']:.4f}.", ""]
    seeds = metrics["seeds"]
    lines += ["## Test F1 per seed", "", "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---:|" * len(seeds)]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in m.get("per_seed_f1", [])) + " |")
    return lines + [""]


def _comparisons(metrics: dict[str, Any]) -> list[str]:
    comps = metrics.get("comparisons") or {}
    if not comps:
        return []
    from edgeskd.distill.stats import METHOD

    first = next(iter(comps.values()))
    lines = ["## Paired comparisons (test F1, percentage points)", "",
             "| comparison | mean | 95 % CI | excludes 0 | per seed |", "|---|---:|---:|:---:|---:|"]
    for c in comps.values():
        lo, hi = c["ci95"]
        lines.append(f"| {SHORT[c['a']]} − {SHORT[c['b']]} | {c['mean']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | "
                     f"{'yes' if c['excludes_zero'] else 'no'} | "
                     + ", ".join(f"{v:+.2f}" for v in c["per_seed"]) + " |")
    lines += ["", f"Method: {METHOD}; {first['n_resamples']} resamples of the {first['n_images']} test images, "
                  f"bootstrap seed {first['seed']}. A difference whose interval contains 0 is not a result."]
    if first["n_seeds"] == 1:
        lines += ["", "With one training seed the interval covers the sampling of test images only and ignores "
                      "the variance between training seeds; train with --seeds 3 or more for that."]
    else:
        lines += ["", "The interval resamples test images, not training seeds: the per-seed column shows how much "
                      "the difference moves between seeds."]
    return lines + [""]


def _tuning(metrics: dict[str, Any]) -> list[str]:
    tuning = metrics.get("tuning")
    if not tuning:
        return []
    lines = ["## T and α chosen on validation (--tune)", "",
             f"Grid T ∈ {{{', '.join(f'{t:g}' for t in tuning['temperatures'])}}}, α ∈ "
             f"{{{', '.join(f'{a:g}' for a in tuning['alphas'])}}}; every cell trained with the same epochs, seeds, "
             f"initial weights and batches; chosen by {tuning['selection']}. The test split is not used.", ""]
    for mode, t in tuning["modes"].items():
        ch = t["chosen"]
        lines += [f"**{SHORT['student-' + mode]}**: chosen T = {ch['temperature']:g}, α = {ch['alpha']:g} "
                  f"(val F1 {_fmt(ch['val_f1'])}).", "", "| T | α | val F1 (mean) | per seed |", "|---:|---:|---:|---:|"]
        for r in t["grid"]:
            mark = " ←" if (r["temperature"], r["alpha"]) == (ch["temperature"], ch["alpha"]) else ""
            lines.append(f"| {r['temperature']:g} | {r['alpha']:g} | {_fmt(r['val_f1'])}{mark} | "
                         + ", ".join(_fmt(v) for v in r["val_f1_per_seed"]) + " |")
        lines.append("")
    return lines


def _settings(metrics: dict[str, Any]) -> list[str]:
    cfg = metrics["config"]
    aug = metrics.get("augment") or {"policy": cfg["augment"], "description": ""}
    t_alpha = ("T and α per mode from --tune (above)" if metrics.get("tuning") else
               f"T = {cfg['temperature']}, α = {cfg['alpha']}" if cfg["temperature"] is not None else
               f"T = {DEFAULT_TEMPERATURES['kd']:g} (KD) / {DEFAULT_TEMPERATURES['skd']:g} (SKD), the modes' defaults, "
               f"α = {cfg['alpha']}")
    lines = ["## Settings", "",
             f"teacher `{cfg['teacher']}` ({cfg['teacher_epochs']} epochs, lr {cfg['teacher_lr']}), "
             f"student `{cfg['student']}` ({cfg['epochs']} epochs, lr {cfg['lr']}), img {cfg['img_size']} px, "
             f"batch {cfg['batch_size']} × {metrics['world_size']} process(es), AdamW + cosine, "
             f"{t_alpha} (α weights the distillation term), augmentation `{aug['policy']}` ({aug['description']}), "
             f"subclasses `{cfg['subclasses']}`"
             + (f", β = {cfg['beta']}, T_aux = {cfg['aux_temperature']}" if cfg["subclasses"] != "known" else "")
             + f", preset `{cfg['preset']}`, device {metrics['device']}; wall time {metrics['wall_time_s']:.0f} s.",
             "", "The students of a seed train together on the same batches (same data order); the distilled ones "
             f"are taught `{cfg.get('teacher_targets', 'augmented')}` teacher targets "
             f"({TEACHER_TARGETS.get(cfg.get('teacher_targets', 'augmented'), '')}).", ""]
    if metrics.get("epoch_seconds"):
        lines += ["Median seconds per epoch (own steps and validation + share of data loading and, for a "
                  "distilled student, of the teacher's pass): "
                  + ", ".join(f"{n} {v:.2f}" for n, v in metrics["epoch_seconds"].items()) + ".", ""]
    if metrics.get("command"):
        lines += ["Command:", "", f"    {metrics['command']}", ""]
    lines += ["Losses: teacher = CE on subclass labels (known) or CE on the logsumexp class "
              "logits + β·L_aux (invented); SKD = α·T²·CE(softmax(t_sub/T), s_sub/T) + (1−α)·CE(y, "
              "LSE-class(s_sub)); KD = the same on the teacher's logsumexp class logits with a C-logit "
              "student; plain = CE on class labels.", ""]
    return lines


def render_report(metrics: dict[str, Any], plots: list[str]) -> str:
    ds, models = metrics["dataset"], metrics["models"]
    lines = _header(metrics) + _results(metrics) + _comparisons(metrics) + _tuning(metrics)
    subs = ds["subclass_names"]
    lines += ["## Class accuracy per true subclass (test)", "",
              "| model | " + " | ".join(subs) + " |", "|---|" + "---:|" * len(subs)]
    for name, m in models.items():
        per = m.get("per_subclass_accuracy", {})
        lines.append(f"| {name} | " + " | ".join(_fmt(per.get(s), digits=1) for s in subs) + " |")
    lines += [""] + clinical_report.section(metrics) + _settings(metrics)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------
def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_curves(per_seed: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    colors = dict(zip(MODEL_ORDER, ("black", "tab:gray", "tab:blue", "tab:red")))
    for si, seed in enumerate(sorted(per_seed)):
        for name, r in per_seed[seed].items():
            if not r.history:
                continue
            ep = [h["epoch"] for h in r.history]
            kw = dict(color=colors.get(name), alpha=1.0 if si == 0 else 0.35, label=name if si == 0 else None)
            ax1.plot(ep, [h.get("train_loss") for h in r.history], **kw)
            ax2.plot(ep, [h.get("val_f1") for h in r.history], **kw)
    ax1.set(xlabel="epoch", ylabel="training loss", title="training loss (each model's own objective)")
    ax2.set(xlabel="epoch", ylabel="F1 (%)", title="validation F1 (positive class)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _savefig(fig, path)
    plt.close(fig)


def plot_confusions(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = metrics["models"]
    names = metrics["dataset"]["class_names"]
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.4), squeeze=False,
                             layout="constrained")
    for ax, (name, m) in zip(axes[0], models.items()):
        cm = np.asarray(m["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{name}\nF1 {m['f1']:.1f}", fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
    axes[0][0].set_ylabel("true", fontsize=8)
    fig.suptitle(f"test confusion matrices (summed over {len(metrics['seeds'])} seed(s))", fontsize=10)
    _savefig(fig, path)
    plt.close(fig)


def plot_dark_knowledge(teacher_logits: np.ndarray, teacher_meta, ls_test, temperature: float, path: Path) -> None:
    """The teacher's mean soft subclass distribution per true subclass, at T = 1 and at the
    distillation temperature: what SKD hands to the student beyond the class label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeskd.distill.evaluate import mean_soft_subclass_distribution

    temps = [1.0] if temperature == 1.0 else [1.0, float(temperature)]
    fig, axes = plt.subplots(1, len(temps), figsize=(6.5 * len(temps), 5.0), squeeze=False,
                             layout="constrained")
    rows, cols = list(ls_test.subclass_names), list(teacher_meta.subclass_names)
    for ax, t in zip(axes[0], temps):
        d = mean_soft_subclass_distribution(teacher_logits, ls_test.subclasses, len(rows), t)
        im = ax.imshow(np.nan_to_num(d), cmap="viridis", vmin=0, vmax=max(1e-6, float(np.nanmax(d))))
        for i in range(d.shape[0]):
            for j in range(d.shape[1]):
                if not np.isnan(d[i, j]):
                    ax.text(j, i, f"{d[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if d[i, j] > 0.6 * np.nanmax(d) else "white")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel("teacher subclass (soft output)", fontsize=8)
        ax.set_ylabel("true subclass", fontsize=8)
        ax.set_title(f"mean softmax(teacher / T), T = {t:g}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("teacher's soft subclass distribution per true subclass (test split)", fontsize=10)
    _savefig(fig, path)
    plt.close(fig)


def write_outputs(out: Path, metrics: dict[str, Any], per_seed: dict[int, dict[str, Any]], ls, cfg) -> None:
    """metrics.json, report.md, curves.png, confusion.png, dark_knowledge.png; with several seeds
    the first seed's checkpoints are also placed at OUT/ (each seed's in OUT/seed-<s>/)."""
    out = Path(out)
    first = per_seed[min(per_seed)]
    if len(per_seed) > 1:
        for name, r in first.items():
            if r.path is not None and r.path.is_file():
                link_or_copy(r.path, out / r.path.name)
    plots = []
    plot_curves(per_seed, out / "curves.png")
    plots.append("curves.png")
    plot_confusions(metrics, out / "confusion.png")
    plots.append("confusion.png")
    t = first.get("teacher")
    if t is not None and t.test_logits is not None:
        plot_dark_knowledge(t.test_logits, t.meta, ls.split("test"), cfg.temperature_for("skd"),
                            out / "dark_knowledge.png")
        plots.append("dark_knowledge.png")
    plots += clinical_report.write_plots(out, per_seed, ls)
    metrics["files"] = sorted(["metrics.json", "report.md", "log.jsonl", *plots,
                               *[r.path.name for r in first.values() if r.path is not None]])
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render_report(metrics, plots))
