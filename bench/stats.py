"""Percentiles over latency samples."""

from __future__ import annotations


def percentile(sorted_samples: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_samples:
        return float("nan")
    rank = max(1, round(p / 100.0 * len(sorted_samples) + 0.5 - 1e-9))
    return sorted_samples[min(rank, len(sorted_samples)) - 1]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    s = sorted(x * 1000.0 for x in samples_s)
    return {
        "n": len(s),
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "p99.9": percentile(s, 99.9),
        "max": s[-1] if s else float("nan"),
    }
