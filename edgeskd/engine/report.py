"""What ``build-engine`` writes and reports: the default artifact paths, one ``Candidate`` per
artifact built (its F1 on the validation split, the drop in points from FP32, latency, throughput,
size, the gate's verdict, and its clinical figures: ECE, NPV and coverage at the artifact's
threshold, with their change from FP32) and the ``BuildReport`` written next to the artifact as
``<artifact>.json``.

F1 values here are in percent (the unit of the report and of ``--max-f1-drop``); so are ECE, NPV and
coverage. The gate decides on F1; a candidate whose ECE, NPV or coverage moves by more than the same
``--max-f1-drop`` points gets a warning in the report (on a validation split of a few hundred
images one call more or less moves NPV by about a point, too noisy to refuse an artifact on).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def f1_percent(runner, dataset, batch_size: int = 64) -> float:
    """F1 (percent) of ``runner`` on ``dataset``: the unit of the gate and the report."""
    return scores(runner, dataset, batch_size)[0]


def scores(runner, dataset, batch_size: int = 64) -> tuple[float, dict[str, float], dict[str, Any]]:
    """(F1, accuracy per data subclass, clinical figures (``edgeskd.clinical.artifact``)), all in
    percent, of ``runner`` on ``dataset`` from one pass over it. SKD's value sits in the hard
    subclasses: a small overall F1 drop can hide a large drop in one of them."""
    from edgeskd.clinical.artifact import as_percent as clinical_percent
    from edgeskd.clinical.artifact import clinical_figures
    from edgeskd.metrics import as_percent
    from edgeskd.runtime.evaluate import evaluate_runner

    m = evaluate_runner(runner, dataset, batch_size=batch_size)
    clinical = clinical_percent(clinical_figures(m["logits"], runner.metadata, dataset.labels))
    pct = as_percent(m)
    return float(pct["f1"]), dict(pct.get("per_subclass_accuracy") or {}), clinical


def add_clinical(c: "Candidate", clinical: dict[str, Any], ref: dict[str, Any] | None, max_drop: float,
                 warnings: list[str]) -> None:
    """Put ``clinical`` (and its change from the FP32 ``ref``) on ``c``; warn when ECE, NPV or coverage
    moves by more than ``max_drop`` points."""
    from edgeskd.clinical.artifact import changes, moved_beyond

    if not clinical:   # a Q/DQ source's FP32 reference: only its recorded F1 is known
        return
    c.ece, c.npv, c.npv_ci95, c.coverage = clinical["ece"], clinical["npv"], clinical["npv_ci95"], clinical["coverage"]
    c.threshold = clinical["threshold"]
    if not ref:
        return
    c.clinical_change = changes(clinical, ref)
    moved = moved_beyond(c.clinical_change, max_drop)
    if moved:
        warnings.append(f"{c.name}: {', '.join(moved)} pts vs FP32 on the validation split, more than the "
                        f"{max_drop:g} pts --max-f1-drop allows F1 (reported, not gated)")


def clinical_summary(c: "Candidate") -> str:
    """ECE, NPV and coverage of a candidate, with their change from FP32 (points)."""
    def one(name: str, v: float | None, key: str) -> str:
        d = c.clinical_change.get(key)
        return f"{name} {'—' if v is None else f'{v:.2f}'}" + ("" if d is None else f" ({d:+.2f})")

    return ", ".join([one("ECE", c.ece, "ece"), one("NPV", c.npv, "npv"), one("coverage", c.coverage, "coverage")])


# Batch-1 medians closer than this are a tie: timing noise on a shared CPU is a few percent, so
# speed alone would pick between equals at random; a tie goes to the better F1, then the smaller file.
LATENCY_TIE = 0.05


@dataclass
class Candidate:
    name: str
    precision: str
    description: str
    size_bytes: int = 0
    p50_ms: float = float("nan")       # batch 1
    p99_ms: float = float("nan")
    throughput: float = float("nan")   # images/s at the throughput batch
    f1: float = float("nan")           # percent
    f1_drop: float = float("nan")      # points vs FP32 ONNX
    passed: bool = False
    note: str = ""
    path: str = ""
    ece: float | None = None           # percent, calibrated with the artifact's temperature(s)
    npv: float | None = None           # percent, at the artifact's threshold (argmax without one)
    npv_ci95: list[float] | None = None
    coverage: float | None = None      # percent of the validation images that get a call
    threshold: float | None = None
    clinical_change: dict[str, float | None] = field(default_factory=dict)   # points vs FP32
    per_subclass: dict[str, float] = field(default_factory=dict)   # accuracy (percent) per data subclass
    fp32_layers: list[str] = field(default_factory=list)          # INT8 model's layers kept in FP32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildReport:
    backend: str
    precision: str
    artifact: Path
    fp32_f1: float
    candidates: list[Candidate] = field(default_factory=list)
    winner: str = ""
    reason: str = ""
    extra_artifacts: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibration: str = ""
    fp32_clinical: dict[str, Any] = field(default_factory=dict)   # the FP32 ONNX's ECE / NPV / coverage
    fp32_per_subclass: dict[str, float] = field(default_factory=dict)
    subclass_counts: dict[str, int] = field(default_factory=dict)   # validation images per subclass
    int8_plan: dict[str, Any] = field(default_factory=dict)        # quantize.recovery.Int8Plan.to_dict()
    notes: list[str] = field(default_factory=list)                 # facts about the choice (not problems)
    source: str = "fp32"                                           # fp32 ONNX, or a Q/DQ ONNX ("qdq")

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "artifact": str(self.artifact),
                "source": self.source, "fp32_f1": self.fp32_f1, "fp32_clinical": self.fp32_clinical,
                "winner": self.winner, "reason": self.reason,
                "candidates": [c.to_dict() for c in self.candidates],
                "extra_artifacts": [str(p) for p in self.extra_artifacts], "warnings": self.warnings,
                "notes": self.notes, "calibration": self.calibration, "int8_plan": self.int8_plan,
                "fp32_per_subclass": self.fp32_per_subclass, "subclass_counts": self.subclass_counts,
                "per_subclass_change": self.per_subclass_change()}

    def per_subclass_change(self) -> dict[str, dict[str, float]]:
        """Per candidate (not the FP32 reference): accuracy change (points) vs FP32 per subclass."""
        out = {}
        for c in self.candidates:
            if c.note == "reference" or not c.per_subclass:
                continue
            out[c.name] = {k: round(v - self.fp32_per_subclass[k], 4) for k, v in c.per_subclass.items()
                           if v is not None and self.fp32_per_subclass.get(k) is not None}
        return out

    def worst_subclass(self, name: str) -> tuple[str, float] | None:
        """(subclass, change in points) of candidate ``name``'s largest per-subclass drop."""
        ch = self.per_subclass_change().get(name) or {}
        return min(ch.items(), key=lambda kv: kv[1]) if ch else None


def gate(f1_fp32: float, f1_q: float, max_drop: float) -> tuple[bool, float]:
    """(passes, drop in points): the candidate may lose at most ``max_drop`` F1 points."""
    drop = round(f1_fp32 - f1_q, 4)
    return drop <= max_drop, drop


def subclass_counts(dataset) -> dict[str, int]:
    counts = np.bincount(np.asarray(dataset.subclasses, dtype=np.int64), minlength=len(dataset.subclass_names))
    return {name: int(n) for name, n in zip(dataset.subclass_names, counts) if n}


def fail_message(c: Candidate, fp32_f1: float, max_drop: float) -> str:
    return (f"{c.name} F1 {c.f1:.2f} vs FP32 {fp32_f1:.2f} on the validation split: drop {c.f1_drop:.2f} pts > "
            f"--max-f1-drop {max_drop:g}; nothing written — calibrate on more representative --calib-data, try "
            "--calib-method percentile, or pass --force to keep it anyway")


def pick_winner(pool: list[Candidate]) -> tuple[Candidate, Candidate]:
    """(winner, fastest) among the candidates allowed to win."""
    fastest = min(pool, key=lambda c: c.p50_ms)
    tied = [c for c in pool if c.p50_ms <= fastest.p50_ms * (1 + LATENCY_TIE)]
    winner = min(tied, key=lambda c: (-c.f1, c.size_bytes, c.p50_ms))
    return winner, fastest


def note_calibration(report: BuildReport, calib: Any, cache: Path) -> None:
    """Where the INT8 ranges come from. The cache is keyed by the calibration set, so cached ranges
    were computed on these same images: their warnings (too few images) hold for a rebuild too."""
    report.warnings += calib.warnings
    if cache.is_file():
        report.calibration = f"cached ranges {cache} from {calib.source} (no recalibration)"
    else:
        report.calibration = f"{calib.source} → {cache}"


def default_outputs(onnx_path: Path, backend: str, precision: str, engines_dir: Path | None = None
                    ) -> tuple[Path, Path]:
    """(artifact, Q/DQ ONNX) default paths next to the ONNX (or in ``engines_dir``)."""
    d = engines_dir or onnx_path.parent
    stem = onnx_path.name[: -len(".onnx")] if onnx_path.name.endswith(".onnx") else onnx_path.stem
    art = d / (f"{stem}.{precision}.engine" if backend == "tensorrt" else f"{stem}.{precision}.cpu.onnx")
    return art, d / f"{stem}.int8.qdq.onnx"
