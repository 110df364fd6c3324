"""Benchmark rows: one per artifact — accuracy through the deployment runtime, latency, throughput,
size, parameters, FLOPs and achieved GFLOP/s, peak memory — plus comparisons between rows.

A failing artifact gives a row with ``status="failed"`` and a one-line ``error``; it never stops the
others. Timing: warm-up, then ``iters`` timed calls with ``perf_counter_ns`` (``edgeskd.runtime.timing``), on
real preprocessed images of the split, the thread count fixed for every backend.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgeskd.bench.flops import onnx_flops_per_image
from edgeskd.bench.memory import track_peak_memory
from edgeskd.errors import ArtifactError, EdgeSKDError, UsageError
from edgeskd.runtime.formats import Format, all_suffixes, detect_format
from edgeskd.runtime.timing import throughput, time_infer

RUN_MODEL_ORDER = ("teacher", "student-none", "student-kd", "student-skd")
ROW_KEYS = ("name", "path", "backend", "precision", "size_mb", "params", "f1", "accuracy", "auc",
            "latency_p50_ms", "latency_p99_ms", "throughput", "peak_mem_mb", "flops_per_image",
            "gflops_achieved", "pct_of_gemm_peak", "speedup_vs_torch_student", "f1_change_vs_fp32",
            "model_name", "status", "error")


@dataclass
class Artifact:
    name: str
    path: Path
    error: str | None = None        # set when the artifact cannot even be classified


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
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    throughput: dict[str, float] = field(default_factory=dict)
    peak_mem_mb: float | None = None
    flops_per_image: float | None = None
    gflops_achieved: float | None = None
    pct_of_gemm_peak: float | None = None
    speedup_vs_torch_student: float | None = None
    f1_change_vs_fp32: float | None = None
    model_name: str = ""
    status: str = "ok"
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ROW_KEYS}


# -- discovery ---------------------------------------------------------------------------------
def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and (p / "metrics.json").is_file() and any(p.glob("*.pt"))


def _run_models(run: Path) -> list[Artifact]:
    found = {pt.stem: pt for pt in run.glob("*.pt")}
    ordered = [m for m in RUN_MODEL_ORDER if m in found] + sorted(set(found) - set(RUN_MODEL_ORDER))
    return [Artifact(name, found[name]) for name in ordered if not name.endswith(".last")]


def _name_for(path: Path) -> str:
    name = path.name
    for s in sorted(all_suffixes(), key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def discover(paths: Sequence[str | os.PathLike]) -> list[Artifact]:
    """Artifacts named on the command line: run directories (their teacher and students),
    checkpoints, ONNX files, engines, and directories holding any of these (one level deep)."""
    out: list[Artifact] = []
    seen: set[Path] = set()

    def add(a: Artifact) -> None:
        key = a.path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(a)

    for raw in paths:
        p = Path(raw)
        if not p.exists():
            add(Artifact(p.name or str(p), p, error=f"{p} does not exist"))
        elif _is_run_dir(p):
            for a in _run_models(p):
                add(a)
        elif p.is_dir():
            children = sorted(p.iterdir())
            found = False
            for c in children:
                if _is_run_dir(c):
                    for a in _run_models(c):
                        add(a)
                    found = True
            for c in children:
                if c.is_file() and any(c.name.lower().endswith(s) for s in all_suffixes()) and \
                        not c.name.startswith("."):
                    add(Artifact(_name_for(c), c))
                    found = True
            if not found:
                add(Artifact(p.name, p, error=f"{p} holds no run directory, .pt, .onnx or .engine file"))
        else:
            try:
                detect_format(p)
                add(Artifact(_name_for(p), p))
            except ArtifactError as e:
                add(Artifact(p.name, p, error=f"unknown artifact kind: {e}"))
    return out


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


def _check_matches_data(meta, ls) -> None:
    if list(meta.class_names) != list(ls.class_names):
        raise ArtifactError(
            f"its classes {list(meta.class_names)} do not match the data's {list(ls.class_names)}; "
            "bench it on the data it was trained for (--data)"
        )
    if meta.output == "subclass_logits" and len(meta.subclass_names) < 2:
        raise ArtifactError("its metadata lists no subclasses for a subclass-logit model")


def _input_batch(ls, meta, n: int, cache: dict) -> np.ndarray:
    """``n`` real preprocessed images from the split (tiled if the split is smaller)."""
    from edgeskd.runtime.evaluate import preprocess_items

    key = (tuple(meta.input_size), tuple(meta.mean), tuple(meta.std), meta.channel_order, n)
    if key not in cache:
        idx = np.arange(n) % max(len(ls), 1)
        cache[key] = preprocess_items(ls, meta, idx)
    return cache[key]


def bench_artifact(art: Artifact, ls, opts: BenchOptions, *, input_cache: dict | None = None,
                   clock: Callable[[], int] | None = None) -> Row:
    """Measure one artifact on ``ls`` (one split). Errors become a failed row."""
    from edgeskd.metrics import as_percent
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
                _check_matches_data(meta, ls)
                m = as_percent(evaluate_runner(runner, ls, batch_size=opts.eval_batch))
                row.f1, row.accuracy, row.auc = m["f1"], m["accuracy"], m["auc"]
                timing_kw: dict[str, Any] = {"warmup": opts.warmup, "iters": opts.iters,
                                             "max_seconds": opts.max_seconds_per_timing}
                if clock is not None:
                    timing_kw["clock"] = clock
                for b in sorted(set(opts.batch_sizes) | {1}):
                    if runner.max_batch is not None and b > runner.max_batch:
                        continue
                    x = _input_batch(ls, meta, b, cache)
                    st = time_infer(runner, x, **timing_kw)
                    if b == 1:
                        row.latency_p50_ms = round(st.p50_ms, 4)
                        row.latency_p99_ms = round(st.p99_ms, 4)
                    if b in opts.batch_sizes:
                        row.throughput[str(b)] = round(throughput(st, b), 2)
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
    torch_rows = {r.model_name: r for r in ok if r.backend == "torch"}
    torch_students = [r for r in ok if r.backend == "torch" and r.model_name.startswith("student")]
    fp32_onnx = {r.model_name: r for r in ok if r.backend == "onnxruntime" and r.precision == "fp32"}
    for r in ok:
        ref = torch_rows.get(r.model_name)
        if ref is None or not ref.model_name.startswith("student"):
            ref = next((t for t in torch_students if t.model_name == "student-skd"), None) or \
                (torch_students[0] if torch_students else None)
        if ref is not None and r.latency_p50_ms and ref.latency_p50_ms:
            r.speedup_vs_torch_student = round(ref.latency_p50_ms / r.latency_p50_ms, 3)
        # FP32 source: the FP32 ONNX of the same model for reduced precisions; the checkpoint for it.
        if r.backend == "torch":
            source = None
        elif r.precision == "fp32" and r.backend == "onnxruntime":
            source = torch_rows.get(r.model_name)
        else:
            source = fp32_onnx.get(r.model_name) or torch_rows.get(r.model_name)
        if source is not None and r.f1 is not None and source.f1 is not None:
            r.f1_change_vs_fp32 = round(r.f1 - source.f1, 4)
        if r.flops_per_image and r.throughput:
            best = max(r.throughput.values())
            r.gflops_achieved = round(r.flops_per_image * best / 1e9, 3)
            if gemm_peak_gflops:
                r.pct_of_gemm_peak = round(100.0 * r.gflops_achieved / gemm_peak_gflops, 2)


def run_bench(artifacts: Iterable[Artifact], ls, opts: BenchOptions, *, machine: dict[str, Any],
              on_row: Callable[[Row], None] | None = None) -> dict[str, Any]:
    rows: list[Row] = []
    cache: dict = {}
    for art in artifacts:
        row = bench_artifact(art, ls, opts, input_cache=cache)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    add_comparisons(rows, machine.get("gemm_peak_gflops"))
    return {"machine": machine, "rows": [r.to_dict() for r in rows]}


def data_refs_from_artifacts(artifacts: Iterable[Artifact]) -> list[dict[str, Any]]:
    """Each distinct training-data reference among the artifacts, in artifact order."""
    refs: list[dict[str, Any]] = []
    for a in artifacts:
        if a.error:
            continue
        try:
            fmt = detect_format(a.path)
            if fmt is Format.torch:
                from edgeskd.export.data import data_ref_from_checkpoint
                from edgeskd.models.checkpoint import load_checkpoint

                ref = data_ref_from_checkpoint(load_checkpoint(a.path))
            elif fmt is Format.onnx:
                import onnx

                props = {p.key: p.value for p in onnx.load(str(a.path), load_external_data=False).metadata_props}
                extra = json.loads(props.get("edgeskd.extra", "{}"))
                ref = extra.get("data") if isinstance(extra, dict) else None
            else:
                ref = None
        except Exception:  # noqa: BLE001 - an unreadable artifact gets its own failed row
            continue
        if isinstance(ref, dict) and all(_data_key(ref) != _data_key(r) for r in refs):
            refs.append(ref)
    return refs


def _data_key(ref: dict[str, Any]) -> tuple:
    """What makes two references different images: a real data set is read at each model's own
    input size; the synthetic one is rendered at the training size, so that size counts too."""
    base = (ref.get("data"), ref.get("format"), ref.get("seed"), ref.get("skip_bad"))
    return base if ref.get("data") else (*base, ref.get("synthetic_n"), ref.get("img_size"))


def describe_data_ref(ref: dict[str, Any]) -> str:
    if ref.get("data"):
        return str(ref["data"])
    return f"synthetic n={ref.get('synthetic_n')} at {ref.get('img_size')} px, seed {ref.get('seed')}"
