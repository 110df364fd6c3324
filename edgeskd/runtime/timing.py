"""The one timing harness: warm-up, many iterations, perf_counter_ns, robust percentiles.

``edgeskd bench`` (rows per artifact and batch size, the GEMM peak), ``build-engine`` (the CPU
variant search) and the TensorRT gate all time through ``time_call`` / ``time_infer``. The clock is
injectable so the statistics are tested on a fake clock, not on wall time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class TimingStats:
    n: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray | list[int]) -> "TimingStats":
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        if ms.size == 0:
            raise ValueError("no timing samples")
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return cls(
            n=int(ms.size), mean_ms=float(ms.mean()), std_ms=float(ms.std(ddof=1) if ms.size > 1 else 0.0),
            min_ms=float(ms.min()), p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), max_ms=float(ms.max()),
        )


def time_call(
    fn: Callable[[], object],
    *,
    warmup: int = 20,
    iters: int = 200,
    clock: Callable[[], int] = time.perf_counter_ns,
    max_seconds: float | None = None,
) -> TimingStats:
    """Call ``fn`` ``warmup`` times untimed, then time ``iters`` calls one by one.

    ``max_seconds`` caps the timed phase (at least 5 samples are always taken), so a slow artifact
    cannot hold up a whole benchmark; the sample count is reported in the stats.
    """
    if warmup < 0 or iters < 1:
        raise ValueError("warmup must be >= 0 and iters >= 1")
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    budget_ns = None if max_seconds is None else int(max_seconds * 1e9)
    start = clock()
    for i in range(iters):
        t0 = clock()
        fn()
        t1 = clock()
        samples.append(t1 - t0)
        if budget_ns is not None and i >= 4 and t1 - start > budget_ns:
            break
    return TimingStats.from_ns(samples)


def throughput(stats: TimingStats, batch: int) -> float:
    """Images per second from per-batch latency (median: robust to hiccups)."""
    return batch / (stats.p50_ms / 1e3) if stats.p50_ms > 0 else float("inf")


def time_infer(runner: Any, batch: np.ndarray, *, warmup: int = 20, iters: int = 200,
               max_seconds: float | None = None, clock: Callable[[], int] = time.perf_counter_ns) -> TimingStats:
    """``time_call`` of ``runner.infer(batch)``."""
    return time_call(lambda: runner.infer(batch), warmup=warmup, iters=iters, clock=clock, max_seconds=max_seconds)


def random_batch(meta: Any, n: int, seed: int = 0) -> np.ndarray:
    """A fixed (seeded) standard-normal float32 batch of ``n`` inputs of the model's size."""
    h, w = meta.input_size
    return np.random.default_rng(seed).normal(size=(n, 3, h, w)).astype(np.float32)


def latency_and_throughput(runner: Any, *, batch: int = 32, seconds: float = 2.0) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) at batch 1 and images/s at ``batch``, on fixed random inputs; each phase is
    capped at ``seconds``."""
    meta = runner.metadata
    s1 = time_infer(runner, random_batch(meta, 1, seed=0), warmup=10, iters=400, max_seconds=seconds)
    sb = time_infer(runner, random_batch(meta, batch, seed=1), warmup=2, iters=50, max_seconds=seconds)
    return s1.p50_ms, s1.p99_ms, throughput(sb, batch)
