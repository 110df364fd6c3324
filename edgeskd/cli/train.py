"""`edgeskd train` — teacher on subclasses, then plain / KD / SKD students; report in OUT/.

Thin wrapper: options → ``resolve_config`` (defaults < --preset < --config FILE < flags) →
``edgeskd.distill.train.run_training``. Under ``torchrun --nproc-per-node N -m edgeskd train ...``
the same command trains with DDP.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeskd.cli.common import DataOpt, FormatOpt, cli_command, console, parse_device
from edgeskd.distill.config import (AUGMENT_POLICIES, PRESETS, TEACHER_TARGETS, TUNE_ALPHAS, TUNE_TEMPERATURES,
                                    TrainConfig)
from edgeskd.errors import UsageError

_T = "Training"
_M = "Models"
_R = "Run"


def _dflt(key: str) -> str:
    """'\\[default: D; fast: F]' for help texts, read off the dataclass and the presets."""
    d = getattr(TrainConfig, key)
    fast = PRESETS["fast"].get(key, d)
    return f"\\[default: {d}" + (f"; fast: {fast}]" if fast != d else "]")


class Preset(str, Enum):
    default = "default"
    fast = "fast"
    gpu = "gpu"


Augment = Enum("Augment", {name: name for name in AUGMENT_POLICIES}, type=str)   # endoscopy | flip | none


# the augmentation and --tune options
AugmentOpt = Annotated[Optional[Augment], typer.Option(
    help="Training augmentation: " + "; ".join(f"{k} = {v}" for k, v in AUGMENT_POLICIES.items())
    + ". \\[default: endoscopy]", rich_help_panel=_T)]
TeacherTargets = Enum("TeacherTargets", {name: name for name in TEACHER_TARGETS}, type=str)   # clean | augmented
TeacherTargetsOpt = Annotated[Optional[TeacherTargets], typer.Option(
    help="What KD and SKD students are taught: " + "; ".join(f"{k} = {v}" for k, v in TEACHER_TARGETS.items())
    + ". \\[default: clean]", rich_help_panel=_T)]
NoAugmentOpt = Annotated[bool, typer.Option("--no-augment", help="Same as --augment none.", rich_help_panel=_T)]
TuneOpt = Annotated[bool, typer.Option(
    "--tune", help="Choose T and α for kd and skd on validation F1 from the grid below (same epochs, seeds and "
    "batches for every cell), then report the chosen students.", rich_help_panel=_T)]
TuneTemperaturesOpt = Annotated[Optional[str], typer.Option(
    help=f"--tune grid of T, comma-separated, each > 0. \\[default: {','.join(f'{t:g}' for t in TUNE_TEMPERATURES)}]",
    rich_help_panel=_T)]
TuneAlphasOpt = Annotated[Optional[str], typer.Option(
    help=f"--tune grid of α, comma-separated, each in [0, 1]. \\[default: {','.join(f'{a:g}' for a in TUNE_ALPHAS)}]",
    rich_help_panel=_T)]


# the data's groups and experiment tracking
GroupByOpt = Annotated[Optional[str], typer.Option(
    "--group-by", metavar="COL", help="Manifest column holding each image's group (video + polyp, patient): "
    "splits keep groups whole. \\[default: the 'group' column when present]", rich_help_panel=_R)]
MlflowOpt = Annotated[Optional[str], typer.Option(
    "--mlflow", help="Log params, per-epoch metrics, report and plots to this MLflow tracking URI "
    "(default: $MLFLOW_TRACKING_URI; none: no MLflow). TensorBoard events go to OUT/tensorboard when "
    "tensorboard is installed.", rich_help_panel=_R)]


@cli_command
def train(
    data: DataOpt = None,
    format: FormatOpt = None,  # type: ignore[assignment]
    preset: Annotated[Optional[Preset], typer.Option(
        help="Settings bundle: 'fast' = the quickstart's few-minute CPU run; 'default' = the full recipe; "
        "'gpu' = real data on a GPU: 224 px, ImageNet-pretrained resnet50 teacher and "
        "timm:mobilenetv4_conv_small student.",
        rich_help_panel=_R)] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="YAML or TOML file with the same keys as these options; flags win.",
        rich_help_panel=_R)] = None,
    teacher: Annotated[Optional[str], typer.Option(
        help="Teacher model (resnet18, resnet50, efficientnet_b0, wide_cnn, wide_cnn_050, or timm:NAME). "
             "\\[default: resnet18; wide_cnn_050 with --preset fast]",
        rich_help_panel=_M)] = None,
    student: Annotated[Optional[str], typer.Option(
        help="Student model (tiny_cnn, mobilenet_v3_small, or timm:NAME). \\[default: tiny_cnn]",
        rich_help_panel=_M)] = None,
    students: Annotated[Optional[str], typer.Option(
        help="Student modes to train, comma-separated: none (plain CE), kd, skd. \\[default: none,kd,skd]",
        rich_help_panel=_M)] = None,
    subclasses: Annotated[Optional[str], typer.Option(
        help="'known' (the data's subclasses) or 'invent:K' (K invented subclasses per class). \\[default: known]",
        rich_help_panel=_M)] = None,
    teacher_checkpoint: Annotated[Optional[Path], typer.Option(
        help="Reuse a trained teacher.pt instead of training one.", rich_help_panel=_M)] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        help="Teacher weights: 'imagenet' (torch hub / Hugging Face cache, else a download), a local state "
        "dict, or 'none'.", rich_help_panel=_M)] = None,
    student_pretrained: Annotated[Optional[str], typer.Option(
        help="Student weights: 'imagenet', a local state dict, or 'none'.", rich_help_panel=_M)] = None,
    img_size: Annotated[Optional[int], typer.Option(
        help=f"Model input size (square). {_dflt('img_size')}", rich_help_panel=_T)] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help=f"Student epochs. {_dflt('epochs')}", rich_help_panel=_T)] = None,
    teacher_epochs: Annotated[Optional[int], typer.Option(
        help=f"Teacher epochs. {_dflt('teacher_epochs')}", rich_help_panel=_T)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Batch size per process. \\[default: 64]", rich_help_panel=_T)] = None,
    lr: Annotated[Optional[float], typer.Option(
        help="Student peak learning rate (AdamW, warm-up + cosine). \\[default: 0.002]", rich_help_panel=_T)] = None,
    teacher_lr: Annotated[Optional[float], typer.Option(
        help="Teacher peak learning rate. \\[default: 0.001]", rich_help_panel=_T)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay. \\[default: 0.01]",
                                                          rich_help_panel=_T)] = None,
    temperature: Annotated[Optional[float], typer.Option(
        help="Distillation temperature T (> 0) of both KD and SKD. \\[default: 2 for both]", rich_help_panel=_T)] = None,
    alpha: Annotated[Optional[float], typer.Option(
        help="Weight of the distillation term, in [0, 1]. \\[default: 0.5]", rich_help_panel=_T)] = None,
    beta: Annotated[Optional[float], typer.Option(
        help="Weight of the invented-subclass auxiliary loss. \\[default: 1]", rich_help_panel=_T)] = None,
    aux_temperature: Annotated[Optional[float], typer.Option(
        help="Temperature of the auxiliary loss. \\[default: 1]", rich_help_panel=_T)] = None,
    augment: AugmentOpt = None,
    no_augment: NoAugmentOpt = False,
    teacher_targets: TeacherTargetsOpt = None,
    tune: TuneOpt = False,
    tune_temperatures: TuneTemperaturesOpt = None,
    tune_alphas: TuneAlphasOpt = None,
    synthetic_n: Annotated[Optional[int], typer.Option(
        help="Images in the synthetic set when --data is not given. \\[default: 3000; fast: 7800]",
        rich_help_panel=_T)] = None,
    seeds: Annotated[Optional[int], typer.Option(
        help="Number of seeds; the report gives mean ± std. \\[default: 1]", rich_help_panel=_R)] = None,
    seed: Annotated[Optional[int], typer.Option(help="First seed. \\[default: 0]", rich_help_panel=_R)] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N. \\[default: auto]",
                                                  rich_help_panel=_R)] = None,
    amp: Annotated[Optional[bool], typer.Option(
        "--amp/--no-amp", help="Mixed precision. \\[default: on for CUDA]", rich_help_panel=_R)] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers. \\[default: 0]",
                                                   rich_help_panel=_R)] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output directory. \\[default: runs/<timestamp>]", rich_help_panel=_R)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last finished epoch, with the settings it started "
        "with (OUT/train-config.json).", rich_help_panel=_R)] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier run in --out (its checkpoints, metrics, report and plots).",
        rich_help_panel=_R)] = False,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip unreadable images instead of failing.", rich_help_panel=_R)] = False,
    group_by: GroupByOpt = None,
    mlflow: MlflowOpt = None,
) -> None:
    """Train the teacher on subclasses, then the plain, KD and SKD students; write checkpoints,
    metrics.json, report.md and plots to OUT."""
    options = dict(locals())   # every option above, by name (None: not given); first, before other names exist
    from edgeskd.distill.config import resolve_config
    from edgeskd.distill.train import run_training

    config_file, mlflow_uri = options.pop("config"), options.pop("mlflow")
    cfg = resolve_config(_config_values(options), config_file)
    metrics = run_training(cfg, console=console, argv=["edgeskd", *sys.argv[1:]], mlflow_uri=mlflow_uri)
    if os.environ.get("RANK", "0") == "0":   # under torchrun, rank 0 wrote the files and reports them
        _print_table(metrics)


def _config_values(options: dict) -> dict:
    """The options as TrainConfig values: enums to their text, flags that are off to None (a config file
    may set them), --no-augment folded into --augment, --device checked."""
    no_augment = options.pop("no_augment")
    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in options.items()}
    for flag in ("resume", "overwrite", "skip_bad", "tune"):   # off = not given (a config file may set it)
        values[flag] = values[flag] or None
    if no_augment:
        if values["augment"] not in (None, "none"):
            raise UsageError(f"--no-augment and --augment {values['augment']} contradict each other; give one")
        values["augment"] = "none"
    if values["device"] is not None:
        d = parse_device(values["device"])   # "cuda" stays "cuda": under torchrun each rank takes its own GPU
        values["device"] = "cuda" if values["device"].strip().lower() == "cuda" else d
    return values


def _print_table(metrics: dict) -> None:
    from rich.table import Table

    multi = len(metrics["seeds"]) > 1
    table = Table(title=f"test split — {metrics['dataset']['name']} (label bits "
                        f"{metrics['dataset']['label_bits']:.3f})", title_justify="left")
    for col in ("model", "arch", "params", "F1", "acc", "bal acc", "sens", "spec", "AUC"):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")

    def pct(v) -> str:
        return "—" if v is None else f"{v:.2f}"

    for name, m in metrics["models"].items():
        f1 = f"{m['f1']:.2f}" + (f" ± {m['f1_std']:.2f}" if multi else "")
        table.add_row(name, m["arch"], f"{m['params']:,}", f1, pct(m["accuracy"]), pct(m.get("balanced_accuracy")),
                      pct(m.get("recall")), pct(m.get("specificity")), pct(m["auc"]))
    console.print(table)
    console.print(f"wrote {len(metrics.get('files', []))} files to {metrics['out']} "
                  f"in {metrics['wall_time_s']:.0f} s", highlight=False)
    if "tensorboard" in metrics.get("tracking", []):
        console.print(f"TensorBoard: tensorboard --logdir {metrics['out']}/tensorboard", highlight=False)
    if "mlflow" in metrics.get("tracking", []):
        console.print("MLflow: logged to the tracking server (params, per-epoch metrics, report, plots)")
