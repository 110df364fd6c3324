"""Training configuration: one frozen-field dataclass, presets, YAML/TOML files, validation.

Precedence (lowest → highest): built-in defaults → ``--preset`` → ``--config FILE`` → flags given
on the command line. Config files use the same keys as the flags (``img-size`` or ``img_size``),
are parsed with ``yaml.safe_load`` / ``tomllib`` (nothing executes), and unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from edgeskd.errors import UsageError

STUDENT_MODES = ("none", "kd", "skd")
DISTILLED_MODES = ("kd", "skd")
DEVICES = ("auto", "cpu", "cuda")
# Training augmentation policies (what each one does is in edgeskd.data.torch_dataset.augment_view):
AUGMENT_POLICIES: dict[str, str] = {
    "endoscopy": "random horizontal/vertical flips, 90° rotations and a small colour jitter",
    "flip": "random horizontal/vertical flips only",
    "none": "no augmentation (for data whose orientation or colour carries meaning)",
}
# What a distilled student is taught on each batch (edgeskd.distill.tasks.TeacherOutputs):
TEACHER_TARGETS: dict[str, str] = {
    "clean": "the teacher's output on each training image un-augmented, one pass before the students",
    "augmented": "the teacher's output on the augmented batch the students see (cached per flip / rotation)",
}
TUNE_TEMPERATURES = (1.0, 2.0, 4.0)
# Default T per distillation mode (without --temperature), chosen on validation F1 with the --tune
# grid (T ∈ {1, 2, 4}, α ∈ {0.5, 0.9}, the same epochs, seeds and batches for both modes), mean
# over 3 seeds, α = 0.5 (best or within noise of best for both modes in every sweep):
#                        KD  T=1    T=2    T=4        SKD  T=1    T=2    T=4
#   fast preset, ResNet-18 teacher  72.70  72.50  71.21        75.02  74.89  74.30
#   fast preset, wide_cnn teacher   73.45  73.50  72.96        75.60  76.62  75.20
#   digits (2 × 5 subclasses, 32 px, no augmentation; a compact driver with the same losses and
#   students, Adam 3e-3, 60 epochs)  95.68  96.25  96.71        99.34  98.35  98.68
# Averaged over the three, T = 2 is KD's best (80.75 vs 80.61 at T = 1, 80.29 at T = 4) and within
# 0.03 of SKD's (T = 1: 83.32, T = 2: 83.29, T = 4: 82.73): one T for both. The textbook KD T = 4
# was KD's best only on digits. The two entries stay separate so a mode's default can move alone.
DEFAULT_TEMPERATURES = {"kd": 2.0, "skd": 2.0}
TUNE_ALPHAS = (0.5, 0.9)


@dataclass
class TrainConfig:
    # data
    data: str | None = None                 # None → the embedded synthetic set
    format: str = "auto"
    synthetic_n: int = 3000                 # size of the synthetic set when --data is not given
    data_seed: int = 0                      # split / synthetic-render seed (fixed across --seeds)
    skip_bad: bool = False
    group_by: str | None = None             # manifest column of each image's group (default: "group")
    # models
    teacher: str = "resnet18"
    student: str = "tiny_cnn"
    pretrained: str | None = None           # teacher weights: "imagenet" or a local state dict
    student_pretrained: str | None = None   # student weights: "imagenet" or a local state dict
    teacher_checkpoint: str | None = None   # reuse a trained teacher (teacher.pt)
    students: list[str] = field(default_factory=lambda: list(STUDENT_MODES))
    subclasses: str = "known"               # known | invent:K
    # optimisation
    img_size: int = 96
    epochs: int = 30                        # students
    teacher_epochs: int = 30
    batch_size: int = 64                    # per process (DDP: global batch = N × batch_size)
    lr: float = 2e-3                        # students (AdamW, warm-up + cosine)
    teacher_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    temperature: float | None = None        # None: each mode's default (DEFAULT_TEMPERATURES); a value: both
    alpha: float = 0.5
    beta: float = 1.0                       # weight of the invented-subclass auxiliary loss
    aux_temperature: float = 1.0
    augment: str = "endoscopy"              # endoscopy | flip | none (old files: true → endoscopy, false → none)
    teacher_targets: str = "clean"          # clean | augmented (TEACHER_TARGETS)
    tune: bool = False                      # pick T and α per distillation mode on validation F1
    tune_temperatures: list[float] = field(default_factory=lambda: list(TUNE_TEMPERATURES))
    tune_alphas: list[float] = field(default_factory=lambda: list(TUNE_ALPHAS))
    # run
    seeds: int = 1
    seed: int = 0                           # first seed; seeds are seed, seed+1, ...
    device: str = "auto"
    amp: bool | None = None                 # None → on for CUDA, off on CPU
    workers: int = 0
    out: str | None = None                  # None → runs/<timestamp>
    resume: bool = False
    overwrite: bool = False                 # replace an earlier run in OUT (else refused)
    preset: str = "default"
    progress: bool = True

    def __post_init__(self) -> None:
        self.augment = augment_policy(self.augment)

    # -- derived ----------------------------------------------------------------
    @property
    def invent_k(self) -> int | None:
        """K of ``invent:K``; None for known subclasses."""
        m = re.fullmatch(r"invent:(-?\d+)", self.subclasses.strip())
        return int(m.group(1)) if m else None

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def temperature_for(self, mode: str) -> float:
        """The distillation temperature of ``mode`` (kd | skd): --temperature if given, else the mode's
        default (DEFAULT_TEMPERATURES)."""
        return float(self.temperature) if self.temperature is not None else DEFAULT_TEMPERATURES[mode]

    @property
    def tune_grid(self) -> list[tuple[float, float]]:
        """(T, α) cells of --tune, T-major."""
        return [(float(t), float(a)) for t in self.tune_temperatures for a in self.tune_alphas]

    def cells_for(self, mode: str) -> list[tuple[float, float]]:
        """The (T, α) settings ``mode`` (kd | skd) trains: the --tune grid, else its one setting."""
        return self.tune_grid if self.tune else [(self.temperature_for(mode), float(self.alpha))]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Settings that change what a checkpoint contains: --resume refuses to mix runs that differ.
    RESULT_KEYS = ("data", "format", "synthetic_n", "data_seed", "teacher", "student", "subclasses", "img_size",
                   "epochs", "teacher_epochs", "batch_size", "lr", "teacher_lr", "weight_decay", "temperature",
                   "alpha", "beta", "aux_temperature", "augment", "teacher_targets", "teacher_checkpoint", "tune",
                   "tune_temperatures", "tune_alphas")

    def fingerprint(self) -> dict[str, Any]:
        d = self.to_dict()
        return {k: d[k] for k in self.RESULT_KEYS}

    @classmethod
    def normalized_fingerprint(cls, recorded: dict[str, Any]) -> dict[str, Any]:
        """A fingerprint recorded by an earlier edgeskd: keys it lacks take their defaults, a boolean
        ``augment`` its policy name."""
        defaults = cls().fingerprint()
        out = {k: recorded.get(k, defaults[k]) for k in cls.RESULT_KEYS}
        if isinstance(out["augment"], bool):
            out["augment"] = augment_policy(out["augment"])
        return out

    # -- checks ------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        from edgeskd.models.registry import check_model_name

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UsageError(msg)

        if self.teacher_checkpoint is None:
            check_model_name(self.teacher, "teacher")   # a registry name or timm:NAME
        check_model_name(self.student, "student")
        bad = [m for m in self.students if m not in STUDENT_MODES]
        need(not bad, f"unknown --students mode {', '.join(map(repr, bad))}; choose from {', '.join(STUDENT_MODES)}")
        need(len(set(self.students)) == len(self.students), "--students lists a mode twice")
        need(0.0 <= self.alpha <= 1.0, f"--alpha {self.alpha} is outside [0, 1]; it weights the distillation term")
        need(self.temperature is None or (math.isfinite(self.temperature) and self.temperature > 0),
             f"--temperature {self.temperature} must be a finite number > 0")
        need(math.isfinite(self.aux_temperature) and self.aux_temperature > 0,
             f"--aux-temperature {self.aux_temperature} must be a finite number > 0")
        need(math.isfinite(self.beta) and self.beta >= 0, f"--beta {self.beta} must be a finite number >= 0")
        need(self.augment in AUGMENT_POLICIES,
             f"--augment {self.augment!r}: choose from {', '.join(AUGMENT_POLICIES)}")
        need(self.teacher_targets in TEACHER_TARGETS,
             f"--teacher-targets {self.teacher_targets!r}: choose from {', '.join(TEACHER_TARGETS)}")
        need(len(self.tune_temperatures) >= 1 and len(self.tune_alphas) >= 1,
             "--tune-temperatures and --tune-alphas need at least one value each")
        bad_t = [t for t in self.tune_temperatures if not (math.isfinite(t) and t > 0)]
        need(not bad_t, f"--tune-temperatures: {bad_t[0] if bad_t else ''} is not a temperature; every T must be a "
                        "finite number > 0")
        bad_a = [a for a in self.tune_alphas if not 0.0 <= a <= 1.0]
        need(not bad_a, f"--tune-alphas: {bad_a[0] if bad_a else ''} is outside [0, 1]; α weights the "
                        "distillation term")
        need(len(set(self.tune_grid)) == len(self.tune_grid), "--tune-temperatures / --tune-alphas list a value twice")
        need(not self.tune or any(m in DISTILLED_MODES for m in self.students),
             "--tune picks T and α of the kd and skd students; --students has neither")
        need(self.seed >= 0 and self.data_seed >= 0, "--seed and data-seed must be >= 0")
        if self.subclasses != "known":
            k = self.invent_k
            need(k is not None, f"--subclasses {self.subclasses!r}: use 'known' or 'invent:K' (e.g. invent:4)")
            need(k >= 2, f"--subclasses invent:{k}: K must be >= 2 invented subclasses per class")  # type: ignore[operator]
        need(self.device in DEVICES or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
             f"--device {self.device!r}: choose auto, cpu, cuda or cuda:N")
        need(16 <= self.img_size <= 1024, f"--img-size {self.img_size} must be in [16, 1024]")
        need(self.epochs >= 1 and self.teacher_epochs >= 1, "--epochs and --teacher-epochs must be >= 1")
        need(self.batch_size >= 2, "--batch-size must be >= 2 (batch norm needs 2 samples)")
        need(self.lr > 0 and self.teacher_lr > 0, "--lr and --teacher-lr must be > 0")
        need(self.weight_decay >= 0, "--weight-decay must be >= 0")
        need(self.warmup_epochs >= 0, "--warmup-epochs must be >= 0")
        need(self.seeds >= 1, "--seeds must be >= 1")
        need(self.workers >= 0, "--workers must be >= 0")
        need(self.synthetic_n >= 20, "--synthetic-n must be >= 20")
        need(self.format in ("auto", "mhist", "folder", "manifest", "synthetic"),
             f"--format {self.format!r}: choose from auto, mhist, folder, manifest, synthetic")
        return self


# Presets. "fast" = what `edgeskd quickstart` runs: teacher + 3 students on the synthetic default in
# a few minutes on a 2-core CPU. "default" = the full recipe (GPU, or a long CPU run).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # 48 px / 7,800 frames: 3,900 train, 1,300 val, 2,600 test images (test noise well under a point,
    # a validation split that pins down the epoch, the temperature and the threshold). More distinct
    # polyps for fewer epochs: against 1,300 train frames for 12 / 15 epochs (seed 0, about the same
    # training time) the SKD student goes from test F1 71.7 to 73.1. The teacher is wide_cnn_050
    # (0.4 M parameters, 4x the student, built for small inputs): in the time wide_cnn (1.6 M) takes
    # for 4 epochs it trains 11 and reaches test F1 78.7 instead of 76.0 (3 seeds); on short CPU
    # schedules epochs count for more than width. Against ResNet-18 (whose ImageNet stem leaves a
    # 48-px frame at 12x12) wide_cnn trained 3x faster and taught better. Epochs: teacher 9, students
    # 9. The students were the undertrained part: against 11 / 6 (3 seeds; the train step 218 s
    # instead of 191 s on a 2-core AVX2 CPU) the teacher loses 0.8 (77.9 vs 78.7) while SKD goes
    # from 73.9 to 76.1, KD from 69.5 to 74.1, plain from 67.7 to 71.0, and on six held-out videos the
    # hyperplastic polyps with a confident call go from 34 / 24 / 30 % to 48 / 27 / 40 %. Student
    # peak LR 1e-2 (the default 2e-3 is for 30 epochs): chosen on validation F1 of the SKD student
    # over 3 seeds from {2, 4, 6, 10, 15}e-3 (mean val F1 73.4 / 73.7 / 74.3 / 74.6 / 73.9); every
    # student takes it, and over 3 seeds test F1 moves SKD 76.1 -> 78.0, KD 74.1 -> 75.3, plain 71.0
    # -> 70.2, the HP calls on six held-out videos 48 / 27 / 40 % -> 53 / 38 / 48 %, at no cost in
    # time (figures on render revision 9). On revision 10 (overlay text on half of the clips, not
    # every frame) with this preset: teacher 78.6, SKD 77.8, KD 74.8, plain 69.4 (3 seeds), HP calls
    # on the six videos 69 / 54 / 64 %. A short warm-up for the short schedule. The student is
    # tiny_cnn at half width (0.1 M parameters): a quarter of the compute, and the small-student
    # regime distillation is for.
    "fast": dict(img_size=48, teacher="wide_cnn_050", teacher_epochs=9, epochs=9, lr=1e-2, warmup_epochs=0.5,
                 batch_size=64, synthetic_n=7800, student="tiny_cnn_050"),
    # "gpu" = a real run on real data (MHIST, a HyperKvasir-style manifest) on a GPU at clinical
    # resolution: ImageNet-pretrained ResNet-50 teacher and MobileNetV4-conv-small student (INT8 /
    # TensorRT friendly), fine-tuned at lower peak LRs than from scratch; the students get twice the
    # teacher's epochs (distillation keeps gaining from longer schedules); AMP on (the CUDA default);
    # loader workers to decode 224-px images as fast as the GPU takes them. README says more.
    "gpu": dict(img_size=224, teacher="resnet50", pretrained="imagenet", student="timm:mobilenetv4_conv_small",
                student_pretrained="imagenet", teacher_epochs=30, epochs=60, batch_size=64, teacher_lr=3e-4,
                lr=1e-3, device="cuda", workers=min(8, os.cpu_count() or 1)),
}

_FIELDS = {f.name: f for f in fields(TrainConfig)}
_NOT_IN_FILES = {"progress", "overwrite"}


def _norm_key(k: str) -> str:
    return str(k).strip().replace("-", "_")


def augment_policy(value: str | bool) -> str:
    """The policy name; ``True`` / ``False`` (the older on/off setting) mean endoscopy / none."""
    if isinstance(value, bool):
        return "endoscopy" if value else "none"
    return value


_NUMBER_LISTS = ("tune_temperatures", "tune_alphas")


def _number_list(key: str, value: Any, source: str) -> list[float]:
    """'1,2,4' or [1, 2, 4] → [1.0, 2.0, 4.0]; one-line UsageError otherwise."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        items = [items]
    out = []
    for v in items:
        try:
            if isinstance(v, bool):
                raise ValueError
            out.append(float(v.strip() if isinstance(v, str) else v))
        except (TypeError, ValueError):
            raise UsageError(f"{source}: {key.replace('_', '-')} must be comma-separated numbers, "
                             f"e.g. 1,2,4; got {value!r}") from None
    return out


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check/convert one value to the field's type; one-line UsageError otherwise."""
    default = _FIELDS[key].default
    if key in _NUMBER_LISTS:
        return _number_list(key, value, source)
    if key == "augment" and isinstance(value, bool):   # older files: augment true / false
        return augment_policy(value)
    if _FIELDS[key].default_factory is not dataclasses.MISSING:  # students: list[str]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{source}: {key} must be a comma-separated string or a list of strings")
        return list(value)
    if value is None:
        if key in ("data", "pretrained", "student_pretrained", "teacher_checkpoint", "out", "amp", "temperature",
                   "group_by"):
            return None
        raise UsageError(f"{source}: {key} needs a value")
    kind = type(default) if default is not None else {"amp": bool, "temperature": float}.get(key, str)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{source}: {key} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str):
        raise UsageError(f"{source}: {key} must be a string, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file of training options (safe parsers only)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {p} does not exist")
    text = p.read_text(encoding="utf-8", errors="replace")
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            raw = tomllib.loads(text)
        else:
            raise UsageError(f"--config {p}: use a .yaml, .yml or .toml file")
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError, tomllib.TOMLDecodeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--config {p} is not valid {suffix[1:].upper()}: {first}") from None
    if raw is None:
        raw = {}
    if isinstance(raw, dict) and set(raw) == {"train"} and isinstance(raw["train"], dict):
        raw = raw["train"]  # allow a [train] table / train: section
    if not isinstance(raw, dict):
        raise UsageError(f"--config {p} must hold a mapping of option: value")
    out = {}
    for k, v in raw.items():
        key = _norm_key(k)
        if key not in _FIELDS or key in _NOT_IN_FILES:
            valid = ", ".join(sorted(n.replace("_", "-") for n in _FIELDS if n not in _NOT_IN_FILES))
            raise UsageError(f"--config {p}: unknown key {k!r}; valid keys: {valid}")
        out[key] = _coerce(key, v, f"--config {p.name}")
    return out


RUN_CONFIG_FILE = "train-config.json"     # the resolved settings, written in OUT when a run starts
# settings of the run itself, not of its result: a resumed run takes these from the command line
_PER_INVOCATION = {"resume", "overwrite", "progress", "out", "device", "amp", "workers"}


def saved_run_config(out: str | Path) -> dict[str, Any]:
    """The settings a run in ``out`` started with ({} if it recorded none)."""
    import json

    p = Path(out) / RUN_CONFIG_FILE
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in d.items() if k in _FIELDS and k not in _PER_INVOCATION} if isinstance(d, dict) else {}


def resolve_config(cli_values: Mapping[str, Any] | None = None, config_file: str | Path | None = None,
                   **overrides: Any) -> TrainConfig:
    """Defaults → preset → config file → command-line values (only those the user gave: not None).

    ``--resume``: the run's saved settings (``OUT/train-config.json``) come before the config file
    and the flags, so ``edgeskd train --out RUN --resume`` needs no other option."""
    given = {_norm_key(k): v for k, v in dict(cli_values or {}, **overrides).items() if v is not None}
    for k in given:
        if k not in _FIELDS:
            raise UsageError(f"unknown training option {k!r}")
    from_file = load_config_file(config_file) if config_file is not None else {}
    resume = given.get("resume", from_file.get("resume", False))
    out = given.get("out", from_file.get("out"))
    saved = saved_run_config(out) if resume and out else {}
    preset = given.get("preset", from_file.get("preset", saved.get("preset", "default")))
    if preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose from {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update({k: _coerce(k, v, RUN_CONFIG_FILE) for k, v in saved.items()})
    values.update(from_file)
    values.update({k: _coerce(k, v, "option") for k, v in given.items()})
    values["preset"] = preset
    # Paths are recorded absolute: checkpoints and metrics.json name their data, and `export`,
    # `build-engine` and `bench` load it from there, from whatever directory they run in.
    for k in _PATH_KEYS:
        if values.get(k):
            values[k] = _path_value(k, values[k])
    return TrainConfig(**values).validate()


def _path_value(key: str, value: str) -> str | None:
    """An absolute path; but --pretrained / --student-pretrained 'imagenet' stays a keyword and
    'none' (e.g. to drop a preset's ImageNet weights) means no weights."""
    word = str(value).strip().lower()
    if key in ("pretrained", "student_pretrained") and word in ("imagenet", "none"):
        return "imagenet" if word == "imagenet" else None
    return str(Path(value).expanduser().resolve())


_PATH_KEYS = ("data", "pretrained", "student_pretrained", "teacher_checkpoint")
