"""Clock conversion, in one place: BPF timestamps are CLOCK_MONOTONIC (bpf_ktime_get_ns);
we store wall-clock epoch nanoseconds."""

from __future__ import annotations

import time


class MonoToEpoch:
    """Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, measured once at start.

    The offset is taken as the midpoint of a tight realtime/monotonic/realtime sandwich (best of
    several tries), so the conversion error is well under a microsecond. NTP steps after start
    are not followed, as bcc tools do not follow them either.
    """

    def __init__(self) -> None:
        best = None
        for _ in range(5):
            r1 = time.clock_gettime_ns(time.CLOCK_REALTIME)
            m = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            r2 = time.clock_gettime_ns(time.CLOCK_REALTIME)
            if best is None or r2 - r1 < best[0]:
                best = (r2 - r1, (r1 + r2) // 2 - m)
        assert best is not None
        self.offset_ns: int = best[1]

    def __call__(self, mono_ns: int) -> int:
        return mono_ns + self.offset_ns


def now_ns() -> int:
    return time.time_ns()


def mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
