"""PTQ recovery: per-layer INT8 sensitivity on validation, and the fewest layers to keep in FP32.

When post-training quantization loses accuracy, the usual first fix is to keep the most sensitive layers
(typically the stem conv, depthwise convs, the head) in FP32. This module finds them:

* ``rank_layers`` — one probe Q/DQ model per compute layer (Conv, Gemm, MatMul), scored against
  the FP32 model on validation images by the relative logit error (mean squared logit difference
  over the FP32 logits' variance) and the F1 change. ``mode="only"`` quantizes that layer alone
  (its own quantization noise); ``mode="leave-out"`` quantizes everything but it (what keeping it
  in FP32 saves).
* ``search_fp32_fallback`` — the most sensitive layers go to FP32 in growing prefixes (1, 2, 4, …),
  then the smallest passing prefix is found by bisection and each kept layer is dropped again if
  the gate still passes without it. Each step builds the real Q/DQ model with ONNX Runtime's
  ``nodes_to_exclude`` and gates it on the whole validation split, within a time budget.

The exclusion list names nodes of the FP32 graph; ``quantize_qdq(fp32_nodes=...)`` applies the
same list to the TensorRT Q/DQ ONNX (s8s8) and to the CPU variants, so both keep the same layers.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeskd.errors import UsageError
from edgeskd.meta import ModelMeta

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MODES = ("only", "leave-out")
RANK_IMAGES = 512          # validation images used to rank layers (stratified by subclass)
DEFAULT_BUDGET_S = 300.0


@dataclass
class LayerScore:
    node: str                  # node name in the FP32 ONNX
    op_type: str
    weights: int               # weight elements: keeping the layer FP32 costs 3 bytes each
    logit_error: float         # relative MSE of the probe's logits vs FP32
    f1: float                  # probe's F1 (percent) on the ranking images
    f1_drop: float             # FP32 F1 − probe F1 (points)
    sensitivity: float = 0.0   # what the ranking sorts by (descending)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trial:
    fp32_nodes: list[str]
    f1: float
    f1_drop: float
    passed: bool
    seconds: float
    size_bytes: int = 0        # the Q/DQ model's file size with these layers in FP32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FallbackResult:
    fp32_nodes: list[str]          # the layers to keep in FP32 (empty: full INT8 passes)
    passed: bool
    f1: float
    f1_drop: float
    fp32_f1: float
    mode: str
    ranking: list[LayerScore] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""              # why the search ended early ("time budget 300 s"), if it did
    method: str = "minmax"         # the calibration method the Q/DQ models were built with
    layer_costs: list[LayerCost] = field(default_factory=list)   # one per layer kept in FP32

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranking"] = [s.to_dict() for s in self.ranking]
        d["trials"] = [t.to_dict() for t in self.trials]
        d["layer_costs"] = [c.to_dict() for c in self.layer_costs]
        return d

    @property
    def full_int8(self) -> Trial | None:
        """The first trial: every layer INT8 (None if the search never ran one)."""
        return self.trials[0] if self.trials and not self.trials[0].fp32_nodes else None

    def trial_of(self, nodes: Sequence[str]) -> Trial | None:
        return next((t for t in self.trials if set(t.fp32_nodes) == set(nodes)), None)


@dataclass
class LayerCost:
    """What keeping one layer in FP32 costs and saves: the extra bytes of the model file and the F1
    (points, validation) the model loses when just this layer goes back to INT8."""

    node: str
    op_type: str
    weights: int
    extra_bytes: int           # file size with the final list − with this layer back in INT8
    f1_saved: float            # final F1 − F1 with this layer back in INT8
    logit_error: float         # its sensitivity in the ranking (relative logit MSE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def named_model(fp32_path: str | Path):
    """The FP32 ONNX with every node named as ``quantize_qdq`` names them (``{op}_{index}`` where the
    exporter left a name empty)."""
    import onnx

    m = onnx.load(str(fp32_path))
    for i, n in enumerate(m.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    return m


def candidate_layers(model, *, keep_head_fp32: bool = True) -> list[tuple[str, str, int]]:
    """(name, op type, weight elements) of the compute nodes INT8 quantizes, in graph order."""
    from onnx import numpy_helper

    from edgeskd.quantize.qdq import head_nodes

    inits = {t.name: t for t in model.graph.initializer}
    head = set(head_nodes(model)) if keep_head_fp32 else set()
    out = []
    for n in model.graph.node:
        if n.op_type not in COMPUTE_OPS or n.name in head:
            continue
        w = inits.get(n.input[1]) if len(n.input) > 1 else None
        out.append((n.name, n.op_type, int(numpy_helper.to_array(w).size) if w is not None else 0))
    return out


class _Probe:
    """Builds Q/DQ variants of one FP32 ONNX with a given FP32 node list and scores them."""

    def __init__(self, fp32_path: Path, meta: ModelMeta, *, cache: Path, calib: Any, method: str,
                 variant: str, threads: int | None, workdir: Path) -> None:
        self.fp32_path, self.meta, self.cache, self.calib = fp32_path, meta, cache, calib
        self.method, self.variant, self.threads, self.workdir = method, variant, threads, workdir
        self._n = 0
        self.last_size = 0

    def logits(self, fp32_nodes: Sequence[str], x: Sequence[np.ndarray]) -> np.ndarray:
        from edgeskd.quantize.qdq import quantize_qdq
        from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

        self._n += 1
        path = self.workdir / f"probe{self._n}.onnx"
        quantize_qdq(self.fp32_path, path, self.meta, calib=self.calib, cache=self.cache, variant=self.variant,
                     method=self.method, fp32_nodes=list(fp32_nodes))
        self.calib = None if self.cache.is_file() else self.calib   # calibrated once, then cached
        with OnnxRuntimeRunner(path, threads=self.threads) as runner:
            out = np.concatenate([runner.infer(b) for b in x])
        self.last_size = path.stat().st_size
        path.unlink(missing_ok=True)
        return out


def _batches(ls, meta: ModelMeta, indices: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    from edgeskd.runtime.evaluate import EvalInputs

    return list(EvalInputs(ls, meta, batch_size=batch_size, indices=indices, cache_bytes=0).batches())


def f1_of(logits: np.ndarray, meta: ModelMeta, labels: np.ndarray) -> float:
    """F1 (percent) of the positive class from raw logits (class or subclass, as ``meta`` says): the
    accuracy gate's F1 (``runtime.evaluate``), so for a model with a "no polyp" class on the polyp
    images only, from the probabilities conditional on a polyp."""
    from edgeskd.metrics import precision_recall_f1
    from edgeskd.runtime.polyp_view import polyp_view
    from edgeskd.runtime.postprocess import class_probabilities

    view = polyp_view(np.asarray(logits, dtype=np.float32), meta, np.asarray(labels, dtype=np.int64))
    pred = class_probabilities(view.logits, view.meta).argmax(axis=1)
    return 100.0 * precision_recall_f1(view.labels, pred, int(view.meta.positive_class))[2]


def logit_error(logits: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared logit difference over the reference logits' variance (0 = identical)."""
    return float(np.mean((logits - ref) ** 2) / max(float(np.var(ref)), 1e-12))


def rank_layers(
    probe: _Probe,
    layers: list[tuple[str, str, int]],
    x: list[np.ndarray],
    labels: np.ndarray,
    ref_logits: np.ndarray,
    *,
    mode: str = "only",
    deadline: float = float("inf"),
    all_nodes: Sequence[str] = (),
) -> tuple[list[LayerScore], bool]:
    """(layers sorted most sensitive first, finished before ``deadline``). Layers not reached
    before the deadline are left out of the ranking."""
    if mode not in MODES:
        raise UsageError(f"sensitivity mode {mode!r}; use one of {', '.join(MODES)}")
    meta = probe.meta
    f1_ref = f1_of(ref_logits, meta, labels)
    base_err = 0.0
    if mode == "leave-out":
        base_err = logit_error(probe.logits([], x), ref_logits)
    scores: list[LayerScore] = []
    for name, op, n_w in layers:
        if time.monotonic() > deadline:
            return sorted(scores, key=lambda s: -s.sensitivity), False
        fp32 = [n for n in all_nodes if n != name] if mode == "only" else [name]
        z = probe.logits(fp32, x)
        err, f1 = logit_error(z, ref_logits), f1_of(z, meta, labels)
        sens = err if mode == "only" else base_err - err
        scores.append(LayerScore(name, op, n_w, err, round(f1, 4), round(f1_ref - f1, 4), sens))
    return sorted(scores, key=lambda s: -s.sensitivity), True


def _rank_indices(ls, size: int, seed: int = 0) -> np.ndarray:
    from edgeskd.quantize.calibration import stratified_indices

    return stratified_indices(ls.subclasses, size, seed)


def search_fp32_fallback(
    fp32_path: str | Path,
    meta: ModelMeta,
    val,
    *,
    cache: str | Path,
    calib: Any = None,
    method: str = "minmax",
    variant: str = "s8s8",
    max_f1_drop: float = 1.0,
    mode: str = "only",
    time_budget_s: float = DEFAULT_BUDGET_S,
    max_fp32_layers: int | None = None,
    threads: int | None = None,
    rank_images: int = RANK_IMAGES,
    log: Callable[[str], None] = lambda s: None,
) -> FallbackResult:
    """The fewest most-sensitive layers to keep in FP32 so that the ``variant`` Q/DQ model is within
    ``max_f1_drop`` F1 points of FP32 on ``val`` (see the module docstring), at most
    ``max_fp32_layers`` of them (None: no limit). Stops at ``time_budget_s`` with the best passing
    list found so far (``passed=False`` if none passed). ``layer_costs`` says what each kept layer
    costs in bytes and saves in F1."""
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    if time_budget_s <= 0:
        raise UsageError(f"sensitivity time budget {time_budget_s} must be > 0 seconds")
    t0 = time.monotonic()
    deadline = t0 + time_budget_s
    fp32_path, cache = Path(fp32_path), Path(cache)
    model = named_model(fp32_path)
    layers = candidate_layers(model)
    all_nodes = [n.name for n in model.graph.node]
    x_val = _batches(val, meta, np.arange(len(val)))
    with OnnxRuntimeRunner(fp32_path, threads=threads) as ref:
        ref_val = np.concatenate([ref.infer(b) for b in x_val])
    fp32_f1 = f1_of(ref_val, meta, val.labels)
    rank_idx = _rank_indices(val, rank_images)
    x_rank = _batches(val, meta, rank_idx)
    with tempfile.TemporaryDirectory(prefix="edgeskd-sens-") as d:
        probe = _Probe(fp32_path, meta, cache=cache, calib=calib, method=method, variant=variant, threads=threads,
                       workdir=Path(d))
        res = FallbackResult([], False, float("nan"), float("nan"), round(fp32_f1, 4), mode, method=method)

        def gate(nodes: list[str]) -> Trial:
            ts = time.monotonic()
            f1 = f1_of(probe.logits(nodes, x_val), meta, val.labels)
            drop = round(fp32_f1 - f1, 4)
            t = Trial(list(nodes), round(f1, 4), drop, drop <= max_f1_drop, round(time.monotonic() - ts, 2),
                      probe.last_size)
            res.trials.append(t)
            log(f"  {method} FP32 {len(nodes)} layer(s): F1 {f1:.2f} (drop {drop:+.2f}) {'pass' if t.passed else 'fail'}")
            return t

        full = gate([])
        if full.passed or max_fp32_layers == 0:
            res.fp32_nodes, res.passed, res.f1, res.f1_drop = [], full.passed, full.f1, full.f1_drop
        else:
            ranking, done = rank_layers(probe, layers, x_rank, val.labels[rank_idx], ref_val[rank_idx], mode=mode,
                                        deadline=deadline, all_nodes=all_nodes)
            res.ranking = ranking
            log("  most sensitive: " + ", ".join(f"{s.node} ({s.logit_error:.3g})" for s in ranking[:5]))
            if not done:
                res.stopped = f"time budget {time_budget_s:g} s (ranked {len(ranking)} of {len(layers)} layers)"
            cap = len(ranking) if max_fp32_layers is None else max(0, int(max_fp32_layers))
            _grow_and_prune([s.node for s in ranking][:cap], gate, res, deadline, time_budget_s)
            if res.passed:
                res.layer_costs = _layer_costs(res, gate)
    res.seconds = round(time.monotonic() - t0, 2)
    return res


def _layer_costs(res: FallbackResult, gate: Callable[[list[str]], Trial]) -> list[LayerCost]:
    """Per kept layer: the trial with just that layer back in INT8 (run now if the search did not)."""
    final = res.trial_of(res.fp32_nodes)
    ranked = {s.node: s for s in res.ranking}
    out = []
    for node in res.fp32_nodes:
        rest = [n for n in res.fp32_nodes if n != node]
        t = res.trial_of(rest) or gate(rest)
        s = ranked.get(node)
        out.append(LayerCost(node, s.op_type if s else "?", s.weights if s else 0,
                             (final.size_bytes - t.size_bytes) if final else 0, round(res.f1 - t.f1, 4),
                             s.logit_error if s else float("nan")))
    return out
def _grow_and_prune(order: list[str], gate: Callable[[list[str]], Trial], res: FallbackResult,
                    deadline: float, budget: float) -> None:
    """Smallest passing prefix of ``order`` (doubling, then bisection), then drop members whose
    removal still passes (least sensitive first). Fills ``res``."""
    best: Trial | None = None
    lo, k = 0, 1                                   # prefixes of length <= lo fail
    while k <= len(order) and time.monotonic() < deadline:
        t = gate(order[:k])
        if t.passed:
            best = t
            break
        lo, k = k, (len(order) if k < len(order) < 2 * k else 2 * k)
    if best is not None:
        hi = len(best.fp32_nodes)
        while hi - lo > 1 and time.monotonic() < deadline:
            mid = (lo + hi) // 2
            t = gate(order[:mid])
            if t.passed:
                best, hi = t, mid
            else:
                lo = mid
        keep = list(best.fp32_nodes)
        for node in reversed(list(keep)):
            if len(keep) <= 1 or time.monotonic() >= deadline:
                break
            t = gate([n for n in keep if n != node])
            if t.passed:
                keep, best = [n for n in keep if n != node], t
        res.fp32_nodes, res.passed, res.f1, res.f1_drop = best.fp32_nodes, True, best.f1, best.f1_drop
    elif res.trials:
        closest = min(res.trials, key=lambda t: t.f1_drop)
        res.fp32_nodes, res.f1, res.f1_drop = closest.fp32_nodes, closest.f1, closest.f1_drop
    if time.monotonic() >= deadline and not res.stopped:
        res.stopped = f"time budget {budget:g} s"
