"""The shared RESP encoder: byte-identical to redis-py's packing, and accepted by a real Redis."""

from __future__ import annotations

import redis

from kernelsight import resp


def test_encoder_matches_redis_py_and_a_real_server_accepts_it(rclient):
    conn = redis.Connection()
    cases = [
        (resp.command("XLEN", b"s"), ("XLEN", b"s")),
        (resp.xadd(b"s", b"1-1", b"d", b"{\"a\":1}\r\n"), ("XADD", b"s", b"1-1", b"d",
                                                          b"{\"a\":1}\r\n")),
        (resp.xack(b"s", b"g", [b"1-1", b"1-2"]), ("XACK", b"s", b"g", b"1-1", b"1-2")),
        (resp.command("SET", "k", 7, "EX", 60), ("SET", "k", 7, "EX", 60)),
    ]
    for ours, args in cases:
        assert ours == b"".join(conn.pack_command(*args)), args
    c = rclient.connection_pool.get_connection()
    try:
        c.send_packed_command([resp.MULTI, resp.xadd(b"s", b"1-1", b"d", b"x\r\ny"),
                               resp.command("XLEN", "s"), resp.EXEC])
        assert c.read_response() == b"OK"
        assert [c.read_response(), c.read_response()] == [b"QUEUED", b"QUEUED"]
        assert c.read_response() == [b"1-1", 1]
    finally:
        rclient.connection_pool.release(c)
    assert rclient.xrange("s") == [(b"1-1", {b"d": b"x\r\ny"})]
