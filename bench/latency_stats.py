"""Percentiles and summaries of latency samples (milliseconds)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Quantiles kept in the JSON for each sample set: enough to draw a CDF without the samples.
CDF_QUANTILES: tuple[float, ...] = (
    *(q / 100 for q in range(0, 100, 2)),
    0.95,
    0.97,
    0.98,
    0.99,
    0.995,
    0.999,
    1.0,
)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..1); NaN for no values."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """count, mean, p50, p90, p99, max and CDF points of ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "cdf": [[q, percentile(ordered, q)] for q in CDF_QUANTILES],
    }


def ratio(value: float | None, reference: float | None) -> float | None:
    """value ÷ reference, or None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    if math.isnan(value) or math.isnan(reference):
        return None
    return value / reference
