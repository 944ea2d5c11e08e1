"""Latency statistics and the confidence interval of a speedup measured on interleaved runs."""

from __future__ import annotations

import numpy as np


def summarize(seconds: np.ndarray, batch: int) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "throughput_per_s": float(batch * 1e3 / ms.mean()),
        "runs": int(ms.size),
    }


def speedup_ci(
    base: np.ndarray, other: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Speedup = median(base) / median(other), with a paired bootstrap interval.

    Runs are paired by round (the models alternate within a round), so resampling rounds keeps the
    machine's slow and fast periods shared between the two series, which is what makes the ratio
    tighter than either latency alone.
    """
    base = np.asarray(base, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    n = min(base.size, other.size)
    base, other = base[:n], other[:n]
    point = float(np.median(base) / np.median(other))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    ratios = np.median(base[idx], axis=1) / np.median(other[idx], axis=1)
    lo, hi = np.percentile(ratios, [50 * (1 - confidence), 50 * (1 + confidence)])
    return point, float(lo), float(hi)
