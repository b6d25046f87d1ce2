"""The one stream-id packer: order, bounds, and a producer's ids always packable."""

from __future__ import annotations

import pytest

from kernelsight import streamid
from kernelsight.streamid import IdSource, StreamIdOutOfRange


def test_pack_is_order_preserving_and_round_trips():
    ids = ["0-0", "1700000000000-0", "1700000000000-1", "1700000000000-524287",
           "1700000000001-0", "17592186044415-524287"]
    packed = [streamid.pack(i) for i in ids]
    assert packed == sorted(packed) and packed[-1] == streamid.PACKED_MAX == 2**63 - 1
    assert [streamid.unpack(p) for p in packed] == ids
    assert [streamid.unpack_bytes(p) for p in packed] == [i.encode() for i in ids]


@pytest.mark.parametrize("bad", ["1700000000000-524288", "17592186044416-0",
                                 "18446744073709551615-18446744073709551615"])
def test_pack_refuses_ids_that_would_collide_or_overflow(bad):
    with pytest.raises(StreamIdOutOfRange, match="stream id"):
        streamid.pack(bad)


def test_id_source_rolls_over_to_the_next_millisecond_and_past_a_stream_top():
    ids = IdSource()
    first = ids.next()
    ids.seq = streamid.SEQ_MAX - 1
    a, b = ids.next(), ids.next()
    assert streamid.parse(a)[1] == streamid.SEQ_MAX and streamid.parse(b)[1] == 0
    assert streamid.pack(first) < streamid.pack(a) < streamid.pack(b)
    # A stream whose top is ahead (another producer's clock, or a huge seq): next id above it.
    for top in (b"9999999999999-7", b"9999999999999-524287", b"9999999999999-999999"):
        ids.advance_past(top)
        nxt = ids.next()
        assert streamid.parse(nxt) > streamid.parse(top)
        streamid.pack(nxt)  # packable
    with pytest.raises(StreamIdOutOfRange):
        ids.advance_past(b"17592186044416-0")
