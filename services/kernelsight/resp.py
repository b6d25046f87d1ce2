"""The one RESP encoder, for commands sent in bulk by producers and the ingester.

redis-py's generic command packing costs more per entry than Redis's own work on it (a
thousand ids in one XACK, two thousand XADDs in one transaction), so these hot commands are
encoded here. Replies are still read with redis-py's parser (Connection.read_response).
"""

from __future__ import annotations

MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def bulk(b: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(b), b)


def arg(a: bytes | str | int) -> bytes:
    """A command argument as bytes (str as UTF-8, int in decimal)."""
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, int) and not isinstance(a, bool):
        return b"%d" % a
    raise TypeError(f"RESP argument must be bytes, str or int, not {type(a).__name__}")


def command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [arg(a) for a in args]
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%b\r\n" % (len(p), p) for p in parts])


def command_with(head: list[bytes | str | int], tail: list[bytes]) -> bytes:
    """``head`` arguments then many bytes arguments (ids, payloads), without a copy per
    argument through ``arg``: the bulk path of XACK and EVALSHA."""
    parts = [arg(a) for a in head]
    return (b"*%d\r\n" % (len(parts) + len(tail))
            + b"".join([b"$%d\r\n%b\r\n" % (len(p), p) for p in parts])
            + b"".join([b"$%d\r\n%b\r\n" % (len(p), p) for p in tail]))


def command_packed(head: list[bytes | str | int], n_args: int, body: bytes) -> bytes:
    """``head`` arguments followed by ``n_args`` arguments already encoded as bulk strings in
    ``body`` (the producer's chunk: three per entry, packed with one format each)."""
    parts = [arg(a) for a in head]
    return (b"*%d\r\n" % (len(parts) + n_args)
            + b"".join([b"$%d\r\n%b\r\n" % (len(p), p) for p in parts]) + body)


def xack(stream: bytes, group: bytes, ids: list[bytes]) -> bytes:
    return command_with([b"XACK", stream, group], ids)


def xadd(stream: bytes, eid: bytes, field: bytes, value: bytes) -> bytes:
    """XADD stream eid field value (one field: the event's JSON)."""
    return b"*5\r\n$4\r\nXADD\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(stream), stream, len(eid), eid, len(field), field, len(value), value)
