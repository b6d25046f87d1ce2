"""The user-space side of bpf/ks_hist.h: bucket bounds and percentiles.

Buckets are log-linear (32 per power of two), so a percentile taken at the bucket's midpoint
is within ~1.6% of the exact value. Histograms in the kernel are cumulative and never reset;
each interval's histogram is the difference of two reads, so no event is lost between reading
and resetting.
"""

from __future__ import annotations

from collections.abc import Mapping

SUB_BITS = 5
SUB = 1 << SUB_BITS
MAX_BITS = 41
BUCKETS = (MAX_BITS - SUB_BITS + 1) * SUB


def bucket(v: int) -> int:
    """Same as ks_hist_bucket() in C (used by tests and the load generator)."""
    v = min(max(v, 0), (1 << MAX_BITS) - 1)
    if v < SUB:
        return v
    e = v.bit_length() - 1
    m = (v >> (e - SUB_BITS)) & (SUB - 1)
    return (e - SUB_BITS + 1) * SUB + m


def bounds(idx: int) -> tuple[int, int]:
    """[lo, hi) in nanoseconds of bucket ``idx``."""
    if idx < SUB:
        return idx, idx + 1
    e = idx // SUB + SUB_BITS - 1
    m = idx % SUB
    width = 1 << (e - SUB_BITS)
    lo = (1 << e) + m * width
    return lo, lo + width


def delta(now: Mapping[int, int], before: Mapping[int, int]) -> dict[int, int]:
    """Counts added between two reads of a cumulative histogram."""
    out = {}
    for k, v in now.items():
        d = v - before.get(k, 0)
        if d > 0:
            out[k] = d
    return out


def percentiles(counts: Mapping[int, int], ps: tuple[float, ...]) -> list[float]:
    """Percentiles (0-100) in nanoseconds, each the midpoint of the bucket holding it;
    0.0 for an empty histogram."""
    total = sum(counts.values())
    if total <= 0:
        return [0.0 for _ in ps]
    items = sorted(counts.items())
    out = []
    for p in ps:
        rank = max(1, -(-total * p // 100))  # ceil(total * p / 100), at least the first
        seen = 0
        for idx, c in items:
            seen += c
            if seen >= rank:
                lo, hi = bounds(idx)
                out.append(lo if hi - lo == 1 else (lo + hi - 1) / 2)
                break
    return out


def max_value(counts: Mapping[int, int]) -> float:
    """Upper bound (inclusive) of the highest non-empty bucket, in ns."""
    if not counts:
        return 0.0
    _, hi = bounds(max(k for k, v in counts.items() if v > 0))
    return float(hi - 1)
