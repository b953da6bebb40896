"""Percentiles, summaries and ratios over latency samples.

Pure functions only (no I/O, no clocks) so that tests/bench can check them exactly and
`python -m bench.report` can rebuild tables from a saved result without rerunning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# Percentiles kept in a result file for plotting a CDF later without the raw samples:
# every whole percent, then a finer tail, where the differences between systems live.
CDF_PERCENTILES: tuple[float, ...] = (
    *(float(p) for p in range(0, 100)),
    99.5, 99.8, 99.9, 99.95, 99.99, 100.0,
)


def percentile(sorted_samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100).

    Nearest rank (not interpolation) so that every reported figure is a latency that was
    actually observed; p=0 gives the minimum and p=100 the maximum.
    """
    if not sorted_samples:
        return float("nan")
    rank = max(1, round(p / 100.0 * len(sorted_samples) + 0.5 - 1e-9))
    return sorted_samples[min(rank, len(sorted_samples)) - 1]


def summary_ms(samples_s: Iterable[float]) -> dict[str, float]:
    """n, p50, p90, p99, p99.9 and max in milliseconds of samples given in seconds."""
    s = sorted(x * 1000.0 for x in samples_s)
    return {
        "n": len(s),
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "p99.9": percentile(s, 99.9),
        "max": s[-1] if s else float("nan"),
    }


def cdf_points(samples_s: Iterable[float]) -> list[list[float]]:
    """[[percentile, ms], ...] at CDF_PERCENTILES: enough to redraw a latency CDF."""
    s = sorted(x * 1000.0 for x in samples_s)
    if not s:
        return []
    return [[p, percentile(s, p)] for p in CDF_PERCENTILES]


def latency_entry(samples_s: Sequence[float]) -> dict[str, object]:
    """A summary plus its CDF points: the shape of every latency entry in a result file."""
    entry: dict[str, object] = dict(summary_ms(samples_s))
    entry["cdf_ms"] = cdf_points(samples_s)
    return entry


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing, NaN or the reference is 0."""
    if value is None or reference is None:
        return None
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return None
    return value / reference


def split_evenly(total: int, parts: int) -> list[int]:
    """Split `total` concurrent writers over `parts` processes, the first ones taking the rest.

    Used so that e.g. 16 in flight over 3 processes is 6+5+5, never 5+5+5 (which would
    silently measure 15).
    """
    if parts <= 0:
        raise ValueError("parts must be positive")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def cpu_ms_per_op(cores: float | None, ops_per_s: float | None) -> float | None:
    """CPU time per operation in ms: `cores` busy over the window doing `ops_per_s`
    (None when either is unknown or nothing completed)."""
    if cores is None or not ops_per_s:
        return None
    return cores * 1000.0 / ops_per_s
