"""Benchmark rows: one per artifact — accuracy through the deployment runtime, its clinical figures
(ECE of the probabilities calibrated with the artifact's temperature(s); NPV and coverage at the
artifact's threshold, at argmax without one: ``edgeskd.clinical.artifact``), latency, throughput,
size, parameters, FLOPs and achieved GFLOP/s, peak memory — plus comparisons between rows (F1, ECE,
NPV and coverage change vs the FP32 source, in points).

A failing artifact gives a row with ``status="failed"`` and a one-line ``error``; it never stops the
others. Timing: warm-up, then ``iters`` timed calls with ``perf_counter_ns`` (``edgeskd.runtime.timing``), on
real preprocessed images of the split, the thread count fixed for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edgeskd.bench.discover import Artifact
from edgeskd.bench.flops import onnx_flops_per_image
from edgeskd.bench.memory import track_peak_memory
from edgeskd.errors import ArtifactError, EdgeSKDError, UsageError
from edgeskd.metrics import as_percent
from edgeskd.runtime.formats import Format, detect_format
from edgeskd.runtime.timing import throughput, time_infer

ROW_KEYS = ("name", "path", "backend", "precision", "size_mb", "params", "f1", "accuracy", "auc",
            "ece", "npv", "npv_ci95", "coverage", "threshold",
            "latency_p50_ms", "latency_p99_ms", "throughput", "peak_mem_mb", "flops_per_image",
            "gflops_achieved", "pct_of_gemm_peak", "speedup_vs_torch_student", "f1_change_vs_fp32",
            "ece_change_vs_fp32", "npv_change_vs_fp32", "coverage_change_vs_fp32",
            "per_subclass_accuracy", "subclass_change_vs_fp32", "worst_subclass_change",
            "presence", "model_name", "fp32_source_model", "status", "error")


@dataclass
class BenchOptions:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: int = 2
    warmup: int = 20
    iters: int = 200
    device: str = "cpu"
    max_seconds_per_timing: float = 10.0   # cap per (artifact, batch) timing phase
    eval_batch: int = 64

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise UsageError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.warmup < 0 or self.iters < 1:
            raise UsageError("--warmup must be >= 0 and --iters >= 1")


@dataclass
class Row:
    name: str
    path: str
    backend: str = "?"
    precision: str = "?"
    size_mb: float | None = None
    params: int | None = None
    f1: float | None = None
    accuracy: float | None = None
    auc: float | None = None
    ece: float | None = None              # percent
    npv: float | None = None              # percent, at the artifact's threshold (argmax without one)
    npv_ci95: list[float] | None = None   # percent, Wilson
    coverage: float | None = None         # percent of the split that gets a call
    threshold: float | None = None        # the artifact's
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    throughput: dict[str, float] = field(default_factory=dict)
    peak_mem_mb: float | None = None
    flops_per_image: float | None = None
    gflops_achieved: float | None = None
    pct_of_gemm_peak: float | None = None
    speedup_vs_torch_student: float | None = None
    f1_change_vs_fp32: float | None = None
    ece_change_vs_fp32: float | None = None
    npv_change_vs_fp32: float | None = None
    coverage_change_vs_fp32: float | None = None
    # accuracy per data subclass (percent), and its change in points vs the same FP32 source as
    # f1_change_vs_fp32: SKD's value sits in the hard subclasses, where INT8 can lose more than overall
    per_subclass_accuracy: dict[str, float] = field(default_factory=dict)
    subclass_change_vs_fp32: dict[str, float] = field(default_factory=dict)
    worst_subclass_change: dict[str, Any] | None = None    # {"subclass", "change"}: the largest drop
    # a model with a "no polyp" class: the figures above are on the polyp images (conditional
    # probabilities); presence (sensitivity, false presence, AUC; percent) apart. None without one
    presence: dict[str, Any] | None = None
    model_name: str = ""
    fp32_source_model: str = ""    # a QAT model's FP32 student (the model_name its FP32 source has)
    lineage: str = ""              # the training checkpoint it comes from (sha256 prefix): rows compare within one
    status: str = "ok"
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ROW_KEYS}


# -- per-artifact measurements ------------------------------------------------------------------
def _onnx_params(path: Path) -> int:
    import onnx

    model = onnx.load(str(path))
    qparams = {n.input[i] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
               for i in (1, 2) if len(n.input) > i}
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name not in qparams))


def _torch_flops_and_params(runner) -> tuple[float | None, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = runner.model
    params = int(sum(p.numel() for p in model.parameters()))
    h, w = runner.meta.input_size
    x = torch.zeros(1, 3, h, w, device=runner.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    return float(fc.get_total_flops()), params


def _static_info(fmt: Format, path: Path, runner) -> tuple[float | None, int | None]:
    """(FLOPs per image, parameter count) of an artifact."""
    if fmt is Format.torch:
        return _torch_flops_and_params(runner)
    if fmt is Format.onnx:
        return onnx_flops_per_image(path), _onnx_params(path)
    extra = runner.meta.extra or {}
    return extra.get("flops_per_image"), extra.get("params")


def _lineage(fmt: Format, path: Path, meta) -> str:
    """The checkpoint an artifact comes from: its own hash for a checkpoint, the one `export` recorded
    (``extra.checkpoint_sha256``, carried on by build-engine) for the rest; "" when unknown."""
    if fmt is Format.torch:
        from edgeskd.export.onnx_export import _sha256

        return _sha256(path)
    return str((meta.extra or {}).get("checkpoint_sha256") or "")


def _check_matches_data(meta, dataset):
    """``dataset`` in the model's class order (the same names in another order are renumbered, as
    build-engine and export do); ArtifactError when the names differ."""
    from edgeskd.data.artifact_data import align_classes

    if sorted(meta.class_names) != sorted(dataset.class_names):
        raise ArtifactError(
            f"its classes {list(meta.class_names)} do not match the data's {list(dataset.class_names)}; "
            "bench it on the data it was trained for (--data)"
        )
    if meta.output == "subclass_logits" and len(meta.subclass_names) < 2:
        raise ArtifactError("its metadata lists no subclasses for a subclass-logit model")
    return align_classes(dataset, meta)


def _input_batch(dataset, meta, n: int, cache: dict) -> np.ndarray:
    """``n`` real preprocessed images from the split (tiled if the split is smaller)."""
    from edgeskd.runtime.evaluate import preprocess_items

    key = (tuple(meta.input_size), tuple(meta.mean), tuple(meta.std), meta.channel_order, n)
    if key not in cache:
        idx = np.arange(n) % max(len(dataset), 1)
        cache[key] = preprocess_items(dataset, meta, idx)
    return cache[key]


def _time_batches(row: Row, runner, dataset, opts: BenchOptions, cache: dict,
                  clock: Callable[[], int] | None) -> None:
    """Batch-1 latency and the throughput at each of ``opts.batch_sizes`` the artifact accepts."""
    timing_kw: dict[str, Any] = {"warmup": opts.warmup, "iters": opts.iters, "max_seconds": opts.max_seconds_per_timing}
    if clock is not None:
        timing_kw["clock"] = clock
    for b in sorted(set(opts.batch_sizes) | {1}):
        if runner.max_batch is not None and b > runner.max_batch:
            continue
        st = time_infer(runner, _input_batch(dataset, runner.metadata, b, cache), **timing_kw)
        if b == 1:
            row.latency_p50_ms = round(st.p50_ms, 4)
            row.latency_p99_ms = round(st.p99_ms, 4)
        if b in opts.batch_sizes:
            row.throughput[str(b)] = round(throughput(st, b), 2)


def _add_clinical(row: Row, logits: np.ndarray, meta, labels: np.ndarray) -> None:
    from edgeskd.clinical.artifact import as_percent as clinical_percent
    from edgeskd.clinical.artifact import clinical_figures

    c = clinical_percent(clinical_figures(logits, meta, labels))
    row.ece, row.npv, row.npv_ci95, row.coverage, row.threshold = (c["ece"], c["npv"], c["npv_ci95"], c["coverage"],
                                                                   c["threshold"])


def bench_artifact(art: Artifact, dataset, opts: BenchOptions, *, input_cache: dict | None = None,
                   clock: Callable[[], int] | None = None) -> Row:
    """Measure one artifact on ``dataset`` (one split). Errors become a failed row."""
    from edgeskd.runtime.evaluate import evaluate_runner
    from edgeskd.runtime.loader import load_runner

    row = Row(name=art.name, path=str(art.path))
    if art.error:
        row.status, row.error = "failed", art.error
        return row
    cache = input_cache if input_cache is not None else {}
    try:
        fmt = detect_format(art.path)
        row.size_mb = round(art.path.stat().st_size / 1e6, 4)
        with track_peak_memory() as mem:
            runner = load_runner(art.path, threads=opts.threads, device=opts.device)
            with runner:
                meta = runner.metadata
                row.backend = runner.backend
                row.precision = meta.precision
                row.model_name = meta.model_name or art.name
                row.lineage = _lineage(fmt, art.path, meta)
                qat = ((meta.extra or {}).get("quant") or {}).get("qat") or {}
                row.fp32_source_model = str(qat.get("source_model") or "") if isinstance(qat, dict) else ""
                dataset = _check_matches_data(meta, dataset)
                raw = evaluate_runner(runner, dataset, batch_size=opts.eval_batch)
                m = as_percent(raw)
                row.f1, row.accuracy, row.auc = m["f1"], m["accuracy"], m["auc"]
                row.presence = m.get("presence")
                _add_clinical(row, raw["logits"], meta, dataset.labels)
                row.per_subclass_accuracy = {k: v for k, v in (m.get("per_subclass_accuracy") or {}).items()
                                             if v is not None}
                _time_batches(row, runner, dataset, opts, cache, clock)
                flops, params = _static_info(fmt, art.path, runner)
                row.flops_per_image = None if flops is None else float(flops)
                row.params = params
        row.peak_mem_mb = mem.peak_mb
    except EdgeSKDError as e:
        row.status, row.error = "failed", str(e)
    except Exception as e:  # noqa: BLE001 - a broken artifact must not stop the others
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row.status, row.error = "failed", f"{type(e).__name__}: {msg}"[:300]
    return row


# -- comparisons between rows ------------------------------------------------------------------
def add_comparisons(rows: list[Row], gemm_peak_gflops: float | None) -> None:
    """Fill speed-up vs the torch-eager student, F1 change vs the FP32 source, achieved GFLOP/s."""
    ok = [r for r in rows if r.status == "ok"]
    torch_pool = [r for r in ok if r.backend == "torch"]
    torch_students = [r for r in ok if r.backend == "torch" and r.model_name.startswith("student")]
    onnx_pool = [r for r in ok if r.backend == "onnxruntime" and r.precision == "fp32"]

    def same_model(pool: list[Row], name: str, lineage: str = "") -> Row | None:
        """The row of ``pool`` named ``name`` from the same checkpoint (two runs' `student-skd` are
        two models); by name alone only when the rows do not say where they come from."""
        named = [x for x in pool if x.model_name == name]
        if lineage and any(x.lineage for x in named):
            return next((x for x in named if x.lineage == lineage), None)
        return named[-1] if named else None

    for r in ok:
        ref = same_model(torch_pool, r.model_name, r.lineage)
        if ref is None or not ref.model_name.startswith("student"):
            ref = next((t for t in torch_students if t.model_name == "student-skd"), None) or \
                (torch_students[0] if torch_students else None)
        if ref is not None and r.latency_p50_ms and ref.latency_p50_ms:
            r.speedup_vs_torch_student = round(ref.latency_p50_ms / r.latency_p50_ms, 3)
        # FP32 source: the FP32 ONNX of the same model for reduced precisions; the checkpoint for it.
        # (a QAT model, or its copy without Q/DQ: the FP32 student it was fine-tuned from)
        if r.backend == "torch":
            source = None
        elif r.fp32_source_model:
            source = same_model(onnx_pool, r.fp32_source_model) or same_model(torch_pool, r.fp32_source_model)
        elif r.precision == "fp32" and r.backend == "onnxruntime":
            source = same_model(torch_pool, r.model_name, r.lineage)
        else:
            source = same_model(onnx_pool, r.model_name, r.lineage) or same_model(torch_pool, r.model_name, r.lineage)
        if source is not None and r.f1 is not None and source.f1 is not None:
            r.f1_change_vs_fp32 = round(r.f1 - source.f1, 4)
            _subclass_change(r, source)
        if source is not None:
            for k in ("ece", "npv", "coverage"):
                a, b = getattr(r, k), getattr(source, k)
                setattr(r, f"{k}_change_vs_fp32", None if a is None or b is None else round(a - b, 4))
        if r.flops_per_image and r.throughput:
            best = max(r.throughput.values())
            r.gflops_achieved = round(r.flops_per_image * best / 1e9, 3)
            if gemm_peak_gflops:
                r.pct_of_gemm_peak = round(100.0 * r.gflops_achieved / gemm_peak_gflops, 2)


def _subclass_change(r: Row, source: Row) -> None:
    """Per-subclass accuracy change (points) of ``r`` vs its FP32 ``source``, and the largest drop."""
    r.subclass_change_vs_fp32 = {k: round(v - source.per_subclass_accuracy[k], 4)
                                 for k, v in r.per_subclass_accuracy.items() if k in source.per_subclass_accuracy}
    if r.subclass_change_vs_fp32:
        k = min(r.subclass_change_vs_fp32, key=r.subclass_change_vs_fp32.get)
        r.worst_subclass_change = {"subclass": k, "change": r.subclass_change_vs_fp32[k]}


def run_bench(artifacts: Iterable[Artifact], dataset, opts: BenchOptions, *, machine: dict[str, Any],
              on_row: Callable[[Row], None] | None = None) -> dict[str, Any]:
    rows: list[Row] = []
    cache: dict = {}
    for art in artifacts:
        row = bench_artifact(art, dataset, opts, input_cache=cache)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    add_comparisons(rows, machine.get("gemm_peak_gflops"))
    return {"machine": machine, "rows": [r.to_dict() for r in rows]}
