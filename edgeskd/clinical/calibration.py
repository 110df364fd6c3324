"""Calibration of class probabilities: ECE, NLL, temperature scaling (numpy only).

- Confidence = the highest class probability; a case is right when its argmax is its label.
- ECE: 15 equal-width confidence bins, right-closed ((0, 1/15], (1/15, 2/15], ...);
  ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b| (Guo et al., 2017). A fraction in [0, 1].
- Temperature scaling: one scalar T > 0 on the class logits (for subclass-logit models the
  logsumexp class logits), fitted on validation by NLL. NLL(β) with β = 1/T is convex (a logsumexp
  of a linear function of β minus a linear term), so its derivative is increasing in β and the
  minimum is found by bisection on the sign of the derivative over log T in ``T_BOUNDS``: no step
  sizes, no local minima. Dividing logits by T > 0 never changes the argmax.
- Per-subclass temperatures (subclass-logit models): subclass k has a temperature T_k, and a case's
  class logits are divided by its own T with 1/T = Σ_k q_k / T_k, q = its subclass probabilities
  (so mostly its predicted subclass's T, blended where it is torn between subclasses). A subclass
  student can be sure of the subtype pair and unsure of the class inside one pair and not another,
  so its class margins need a different scale per subtype, which one global T cannot give. The
  1/T_k are fitted jointly by NLL on validation (convex; Newton) with a weak prior towards the
  global 1/T; a subclass with less than ``MIN_SUBCLASS_FIT`` validation weight keeps the global T.
  They are deployed only when they lower the validation NLL out of sample (2-fold: fitted on one
  half, scored on the other, both ways) against the global T fitted the same way; the argmax is
  unchanged either way (each case is divided by one T > 0).
- A fit is refused (``TemperatureFit.reason`` says why; ``temperature`` is None) when validation is
  too small, holds one class only (or too few of one), has non-finite logits, or its NLL keeps
  falling to a search bound (e.g. no validation errors at all: the NLL falls as T → 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeskd.runtime.postprocess import case_temperatures, subclass_to_class_logits

N_BINS = 15
MIN_FIT_SAMPLES = 50       # fewer validation cases than this: no temperature
MIN_FIT_PER_CLASS = 5      # every class must have at least this many validation cases
T_BOUNDS = (1e-2, 1e2)     # a fitted temperature must lie strictly inside
MIN_SUBCLASS_FIT = 50      # validation weight (Σ subclass probabilities) a subclass needs for its own T
SUBCLASS_PRIOR = 0.2       # Gaussian prior on the subclass β_k = 1/T_k: ρ·Σ(β_k − β_global)² added to the summed NLL


def _probs(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, C) with C >= 2, got shape {p.shape}")
    return p


def _labels(labels: Any, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels shape {y.shape} does not fit {n} cases")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    return y


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(x, axis=axis))


# -- ECE and reliability --------------------------------------------------------------------------
@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy (NaN in empty bins) of ``n_bins`` equal bins."""

    edges: np.ndarray        # (n_bins + 1,) from 0 to 1
    counts: np.ndarray       # (n_bins,) cases per bin
    confidence: np.ndarray   # (n_bins,) mean confidence per bin
    accuracy: np.ndarray     # (n_bins,) share of right argmax calls per bin

    @property
    def ece(self) -> float:
        n = int(self.counts.sum())
        full = self.counts > 0
        gap = np.abs(self.accuracy[full] - self.confidence[full])
        return float(np.sum(self.counts[full] / n * gap)) if n else float("nan")


def reliability_bins(probs: Any, labels: Any, n_bins: int = N_BINS) -> ReliabilityBins:
    p = _probs(probs)
    y = _labels(labels, len(p), p.shape[1])
    if len(p) == 0:
        raise ValueError("no cases to bin")
    conf = p.max(axis=1)
    right = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins: edges[b] < conf <= edges[b + 1] (confidence 0 cannot occur for a max prob)
    b = _bin_index(conf, n_bins)
    counts = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / counts
        acc = np.bincount(b, weights=right, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, acc)


def ece(probs: Any, labels: Any, n_bins: int = N_BINS) -> float:
    """Expected calibration error (fraction) with ``n_bins`` equal-width confidence bins."""
    return reliability_bins(probs, labels, n_bins).ece


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)


def ece_sampling_floor(probs: Any, n_bins: int = N_BINS, n_sims: int = 1000, seed: int = 0) -> dict[str, float]:
    """The ECE that sampling alone gives on these cases: each case's argmax is drawn right with
    probability equal to its confidence (a perfectly calibrated model with these confidences), ECE
    measured, ``n_sims`` times (seeded). ``{"mean", "p95"}`` as fractions: an observed ECE inside
    this range is consistent with perfect calibration on this many cases."""
    p = _probs(probs)
    if len(p) == 0:
        raise ValueError("no cases for the ECE sampling floor")
    conf = p.max(axis=1)
    onehot = np.eye(n_bins)[_bin_index(conf, n_bins)]                    # (N, B)
    counts = onehot.sum(axis=0)
    full = counts > 0
    mean_conf = (conf @ onehot)[full] / counts[full]
    rng = np.random.default_rng(seed)
    right = (rng.random((int(n_sims), len(conf))) < conf).astype(np.float64)   # (S, N)
    acc = (right @ onehot)[:, full] / counts[full]
    sims = np.abs(acc - mean_conf) @ (counts[full] / len(conf))
    return {"mean": float(sims.mean()), "p95": float(np.percentile(sims, 95))}


def nll(class_logits: Any, labels: Any, temperature: Any = 1.0) -> float:
    """Mean negative log-likelihood (nats) of the labels under softmax(class_logits / temperature);
    ``temperature`` is one number or one per case ((N,) or (N, 1))."""
    z = np.asarray(class_logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"class logits must be (N, C) with C >= 2, got shape {z.shape}")
    y = _labels(labels, len(z), z.shape[1])
    if len(z) == 0:
        raise ValueError("no cases for the NLL")
    t = np.asarray(temperature, dtype=np.float64)
    lp = log_softmax(z / (t.reshape(-1, 1) if t.ndim else t), axis=1)
    return float(-np.mean(lp[np.arange(len(y)), y]))


# -- logits of an artifact → (calibrated) probabilities ---------------------------------------------
def class_logits(logits: Any, meta: Any) -> np.ndarray:
    """(N, C) class logits from a model's raw output: the logsumexp of each class's subclass block
    for subclass-logit models, the output itself otherwise."""
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != meta.num_outputs:
        raise ValueError(f"logits {x.shape} do not fit the model's {meta.num_outputs} outputs")
    if meta.output == "subclass_logits":
        return subclass_to_class_logits(x, meta.subclass_to_class).astype(np.float64)
    return x.astype(np.float64)


def calibrated_probabilities(logits: Any, meta: Any, temperature: float | None = None) -> np.ndarray:
    """(N, C) softmax(class logits / T), T = ``temperature`` or else the artifact's (per case with
    ``meta.subclass_temperatures``, else ``meta.temperature``; 1.0 for artifacts without one):
    ``runtime.postprocess.class_probabilities`` in float64. Argmax unchanged."""
    return softmax(class_logits(logits, meta) / case_temperatures(logits, meta, temperature), axis=1)


# -- temperature scaling --------------------------------------------------------------------------
@dataclass(frozen=True)
class TemperatureFit:
    temperature: float | None    # None: no fit (``reason`` says why); use 1.0 (no scaling) then
    reason: str | None
    n: int                       # validation cases
    nll_before: float | None     # validation NLL at T = 1
    nll_after: float | None      # validation NLL at the fitted T

    @property
    def ok(self) -> bool:
        return self.temperature is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _refusal(logits: np.ndarray, y: np.ndarray, num_classes: int, min_samples: int,
             min_per_class: int) -> str | None:
    n = len(y)
    if n < min_samples:
        return f"validation has {n} cases, fewer than the {min_samples} a temperature fit needs"
    counts = np.bincount(y, minlength=num_classes)
    if np.count_nonzero(counts) < 2:
        return f"validation holds one class only (class {int(np.argmax(counts))}); a temperature fit needs both sides"
    if counts.min() < min_per_class:
        return (f"validation is one-sided: class {int(np.argmin(counts))} has {int(counts.min())} cases, "
                f"fewer than {min_per_class}")
    if not np.all(np.isfinite(logits)):
        return "validation logits contain NaN or infinity"
    if np.all(np.ptp(logits, axis=1) == 0):
        return "validation logits are the same for every class; no temperature changes the probabilities"
    return None


def _dnll_dbeta(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """d/dβ of mean NLL(softmax(β·z)): mean over cases of E_p[z] − z_label (increasing in β)."""
    p = softmax(beta * z, axis=1)
    return float(np.mean(np.sum(p * z, axis=1) - z[np.arange(len(y)), y]))


def _dnll_dbeta_curvature(z: np.ndarray, y: np.ndarray, beta: float) -> tuple[float, float]:
    """(d/dβ, d²/dβ²) of mean NLL(softmax(β·z)): E_p[z] − z_label and Var_p[z], averaged over cases."""
    p = softmax(beta * z, axis=1)
    ez = np.sum(p * z, axis=1)
    g = float(np.mean(ez - z[np.arange(len(y)), y]))
    h = float(np.mean(np.sum(p * z * z, axis=1) - ez * ez))
    return g, h


def fit_temperature(class_logits_val: Any, labels: Any, *, min_samples: int = MIN_FIT_SAMPLES,
                    min_per_class: int = MIN_FIT_PER_CLASS, bounds: tuple[float, float] = T_BOUNDS,
                    iters: int = 100) -> TemperatureFit:
    """Fit one temperature T on validation class logits by NLL, or say why not.

    For subclass-logit students pass ``class_logits(logits, meta)`` (logsumexp class logits)."""
    z = np.asarray(class_logits_val, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"class logits must be (N, C) with C >= 2, got shape {z.shape}")
    y = _labels(labels, len(z), z.shape[1])
    why = _refusal(z, y, z.shape[1], min_samples, min_per_class)
    if why is not None:
        before = nll(z, y) if len(y) and np.all(np.isfinite(z)) else None
        return TemperatureFit(None, why, len(y), before, None)
    t_lo, t_hi = bounds
    lo, hi = math.log(1.0 / t_hi), math.log(1.0 / t_lo)        # log β = −log T
    if _dnll_dbeta(z, y, math.exp(lo)) >= 0:
        why = (f"the validation NLL keeps falling up to T = {t_hi:g}: the predictions carry almost no "
               f"signal on validation")
        return TemperatureFit(None, why, len(y), nll(z, y), None)
    if _dnll_dbeta(z, y, math.exp(hi)) <= 0:
        why = (f"the validation NLL keeps falling down to T = {t_lo:g}: validation has too few errors "
               f"({int(np.sum(z.argmax(1) != y))} of {len(y)}) to fit a temperature")
        return TemperatureFit(None, why, len(y), nll(z, y), None)
    u = min(max(0.0, lo), hi)          # start at T = 1
    for _ in range(iters):
        # Newton on β (the NLL is convex in β: curvature = mean variance of z under p), kept
        # inside the bracket that still holds the root; a step that leaves it bisects instead.
        g, h = _dnll_dbeta_curvature(z, y, math.exp(u))
        if g < 0:
            lo = u
        else:
            hi = u
        beta = math.exp(u) - g / h if h > 0 else 0.0
        nxt = math.log(beta) if beta > 0 else lo - 1.0
        if abs(nxt - u) < 1e-12 or hi - lo < 1e-12:   # converged (a last step this small stays put)
            break
        u = nxt if lo < nxt < hi else 0.5 * (lo + hi)
    t = 1.0 / math.exp(u)
    return TemperatureFit(t, None, len(y), nll(z, y), nll(z, y, t))


def temperature_interval(class_logits_val: Any, labels: Any, *, n_boot: int = 200, seed: int = 0,
                         **fit_kw: Any) -> list[float] | None:
    """95 % bootstrap interval of the fitted temperature (validation cases resampled, seeded): how well
    this validation split pins T down. None when fewer than 90 % of the resamples give a fit."""
    z = np.asarray(class_logits_val, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return None
    rng = np.random.default_rng(seed)
    temps = []
    for _ in range(int(n_boot)):
        idx = rng.integers(0, len(y), len(y))
        fit = fit_temperature(z[idx], y[idx], **fit_kw)
        if fit.ok:
            temps.append(fit.temperature)
    if len(temps) < 0.9 * n_boot:
        return None
    lo, hi = np.percentile(temps, [2.5, 97.5])
    return [float(lo), float(hi)]


# -- per-subclass temperatures ----------------------------------------------------------------------
@dataclass(frozen=True)
class SubclassTemperatureFit:
    temperatures: list[float] | None   # T_k per subclass (global T where not own); None: not used
    own: list[bool]                    # which subclasses have a temperature of their own
    reason: str | None                 # why they are not used (None when they are)
    heldout_nll: dict[str, float] | None   # 2-fold out-of-sample validation NLL: {"global", "subclass"}

    @property
    def ok(self) -> bool:
        return self.temperatures is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_subclass(z: np.ndarray, y: np.ndarray, q: np.ndarray, global_t: float, min_group: int,
                  iters: int = 100) -> tuple[list[float], list[bool]]:
    """Inverse temperatures β_k (case i's β = q_i · β) minimising the validation NLL plus a weak
    Gaussian prior centred on the global β (``SUBCLASS_PRIOR``: it settles the split of β between
    subclasses that always share their cases, which the data cannot tell apart), by Newton's method:
    the objective is convex in β (a logsumexp of a linear map of β minus a linear term, plus a
    quadratic). Subclasses with less than ``min_group`` validation weight, or less than
    ``MIN_FIT_PER_CLASS`` of either class, keep the global β. Returns 1/β_k and which were fitted."""
    n_sub = q.shape[1]
    weight = np.stack([q[y == c].sum(axis=0) for c in range(z.shape[1])])          # (C, K) soft counts
    free = (q.sum(axis=0) >= min_group) & (weight.min(axis=0) >= MIN_FIT_PER_CLASS)
    beta0 = 1.0 / float(global_t)
    beta = np.full(n_sub, beta0)
    if not free.any():
        return [float(global_t)] * n_sub, free.tolist()
    qf, rows, n = q[:, free], np.arange(len(y)), len(y)
    ridge = 2.0 * SUBCLASS_PRIOR / n

    def objective(b: np.ndarray) -> float:
        return nll(z, y, 1.0 / (q @ b)) + 0.5 * ridge * float(np.sum((b - beta0) ** 2))

    lo, hi = 1.0 / T_BOUNDS[1], 1.0 / T_BOUNDS[0]
    current = objective(beta)
    for _ in range(iters):
        p = softmax((q @ beta)[:, None] * z, axis=1)
        ez = np.sum(p * z, axis=1)
        grad = qf.T @ (ez - z[rows, y]) / n + ridge * (beta[free] - beta0)
        hess = (qf * (np.sum(p * z * z, axis=1) - ez ** 2)[:, None]).T @ qf / n + ridge * np.eye(len(grad))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            trial = beta.copy()
            trial[free] -= t * step
            if np.all((trial[free] > lo) & (trial[free] < hi)):
                value = objective(trial)
                if value <= current:
                    break
            t *= 0.5
        else:
            break
        beta, current = trial, value
        if np.max(np.abs(t * step)) < 1e-10:
            break
    return [float(1.0 / b) for b in beta], free.tolist()


def fit_subclass_temperatures(subclass_logits_val: Any, labels: Any, subclass_to_class: Any, global_t: float,
                              *, min_group: int = MIN_SUBCLASS_FIT, seed: int = 0) -> SubclassTemperatureFit:
    """One temperature T_k per subclass; a case's class logits are divided by T with 1/T = Σ_k q_k / T_k,
    q = its subclass probabilities (mostly its predicted subclass's T). Fitted jointly by NLL on
    validation; subclasses with too little validation weight keep ``global_t``. Used only when a 2-fold
    split of validation shows them lowering the NLL out of sample against one global T."""
    s = np.asarray(subclass_logits_val, dtype=np.float64)
    idx = np.asarray(subclass_to_class, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] != len(idx):
        raise ValueError(f"subclass logits {s.shape} do not fit {len(idx)} subclasses")
    z = subclass_to_class_logits(s, idx).astype(np.float64)
    y = _labels(labels, len(z), z.shape[1])
    q = softmax(s, axis=1)           # how much of each subclass's 1/T_k a case takes (as the runtime does)
    temps, own = _per_subclass(z, y, q, global_t, min_group)
    if not any(own):
        return SubclassTemperatureFit(None, own, f"no subclass has {min_group} validation images' weight with "
                                      f"{MIN_FIT_PER_CLASS} of each class; the global temperature is used", None)
    if any(o and not (T_BOUNDS[0] * 1.01 < t < T_BOUNDS[1] * 0.99) for o, t in zip(own, temps)):
        return SubclassTemperatureFit(None, own, "a subclass temperature ran to a search bound (validation has "
                                      "too few errors there); the global temperature is used", None)
    perm = np.random.default_rng(seed).permutation(len(y))
    halves = (perm[: len(y) // 2], perm[len(y) // 2:])
    held = {"global": 0.0, "subclass": 0.0}
    for fit_on, score_on in (halves, halves[::-1]):
        g = fit_temperature(z[fit_on], y[fit_on])
        tg = g.temperature if g.ok else 1.0
        ts, _ = _per_subclass(z[fit_on], y[fit_on], q[fit_on], tg, min_group)
        w = len(score_on) / len(y)
        held["global"] += w * nll(z[score_on], y[score_on], tg)
        held["subclass"] += w * nll(z[score_on], y[score_on], 1.0 / (q[score_on] @ (1.0 / np.asarray(ts))))
    held = {k: round(v, 6) for k, v in held.items()}
    if not held["subclass"] < held["global"]:
        return SubclassTemperatureFit(None, own, (f"per-subclass temperatures did not lower the out-of-sample "
                                                  f"validation NLL ({held['subclass']:.4f} vs {held['global']:.4f} "
                                                  "with one temperature); the global temperature is used"), held)
    return SubclassTemperatureFit(temps, own, None, held)
