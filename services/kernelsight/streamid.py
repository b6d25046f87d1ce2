"""Redis stream ids ``<ms>-<seq>`` and their packed form ``ms << 19 | seq``: the one place
both sides (producers choosing ids, the ingester storing ``stream_id``) take them from.

The packed form is one sortable integer that fits SQLite's signed 64-bit INTEGER: ms < 2**44
(until the year 2527) and seq < 2**19 (half a million entries in one millisecond). Redis allows
larger values in both parts; such ids cannot be packed without colliding (a seq of 2**19 would
equal the next millisecond's seq 0) or overflowing, so ``pack`` refuses them and producers never
create them (IdSource).
"""

from __future__ import annotations

import time

SEQ_BITS = 19
SEQ_MAX = (1 << SEQ_BITS) - 1  # 524,287
MS_MAX = (1 << 44) - 1  # 17,592,186,044,415 ms: the year 2527
PACKED_MAX = (MS_MAX << SEQ_BITS) | SEQ_MAX  # 2**63 - 1


class StreamIdOutOfRange(ValueError):
    """A stream id whose ms or seq part does not fit the packed form."""


def parse(entry_id: str | bytes) -> tuple[int, int]:
    """``<ms>-<seq>`` (or ``<ms>``) as two integers, without range checks."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def pack_parts(ms: int, seq: int) -> int:
    """The packed id, or StreamIdOutOfRange."""
    if not 0 <= seq <= SEQ_MAX:
        raise StreamIdOutOfRange(f"sequence {seq} above {SEQ_MAX}")
    if not 0 <= ms <= MS_MAX:
        raise StreamIdOutOfRange(f"milliseconds {ms} above {MS_MAX}")
    return ms << SEQ_BITS | seq


def pack(entry_id: str | bytes) -> int:
    """Pack a Redis stream id ``<ms>-<seq>`` into one sortable integer below 2**63."""
    ms, seq = parse(entry_id)
    try:
        return pack_parts(ms, seq)
    except StreamIdOutOfRange as e:
        raise StreamIdOutOfRange(f"stream id {entry_id!r}: {e}") from None


def unpack(v: int) -> str:
    return f"{v >> SEQ_BITS}-{v & SEQ_MAX}"


def unpack_bytes(v: int) -> bytes:
    return b"%d-%d" % (v >> SEQ_BITS, v & SEQ_MAX)


class IdSource:
    """A producer's entry ids: from the wall clock, strictly increasing, always packable.

    The id is chosen once, when an event is produced, so a re-send after an ambiguous failure
    carries the same id and Redis refuses the copy."""

    def __init__(self) -> None:
        self.ms = 0
        self.seq = 0

    def next(self) -> bytes:
        ms = time.time_ns() // 1_000_000
        if ms > self.ms:
            self.ms, self.seq = ms, 0
        elif self.seq >= SEQ_MAX:
            self.ms, self.seq = self.ms + 1, 0
        else:
            self.seq += 1
        return b"%d-%d" % (self.ms, self.seq)

    def advance_past(self, entry_id: str | bytes) -> None:
        """Make the next id larger than ``entry_id`` (a stream's top, written by a producer
        whose clock is ahead of ours), staying packable."""
        ms, seq = parse(entry_id)
        if ms > MS_MAX or (ms == MS_MAX and seq >= SEQ_MAX):
            raise StreamIdOutOfRange(f"no packable id above {entry_id!r}")
        if (ms, seq) >= (self.ms, self.seq):
            if seq >= SEQ_MAX:
                ms, seq = ms + 1, 0
            self.ms, self.seq = ms, seq
