"""The ingester's Redis wire: one pipelined connection, the XREADGROUP request and its reply."""

from __future__ import annotations

from collections import deque

import redis

from kernelsight import resp, schema

ALL_STREAMS: list[bytes] = [et.stream.encode() for et in schema.EVENT_TYPES] + [
    schema.ACCOUNTING_STREAM.encode()]


def xreadgroup_args(group: str, consumer: str, streams: list[bytes], ids: str,
                    block: int | None, count: int) -> list:
    """XREADGROUP over ``streams``, all from ``ids`` (">" new entries, "0" own pending)."""
    args: list = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block is not None:
        args += ["BLOCK", block]
    return [*args, "STREAMS", *streams, *([ids] * len(streams))]


def entries(res: object) -> list:
    """XREADGROUP's reply as [(stream, entries)]: a RESP3 map or a RESP2 array, or nothing."""
    if not res:
        return []
    return list(res.items()) if isinstance(res, dict) else res  # type: ignore[union-attr]


class Wire:
    """One dedicated Redis connection with pipelined commands: send now, read the reply later.

    The next XREADGROUP is sent before the current batch is stored, and XACKs are not waited
    on, so Redis gathers and acknowledges entries while this process validates and writes to
    SQLite: one thread, no GIL hand-offs, Redis's work off the critical path."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.conn = None
        self.tags: deque[str] = deque()

    def _conn(self):
        if self.conn is None:
            self.conn = self.r.connection_pool.get_connection()
        return self.conn

    def send(self, tag: str, *args: object) -> None:
        self._conn().send_command(*args)
        self.tags.append(tag)

    def send_xack(self, stream: bytes, group: bytes, ids: list[bytes]) -> None:
        """XACK of a whole batch, RESP-encoded by kernelsight.resp: redis-py's generic packing
        of a thousand ids costs more than the rest of the acknowledgement."""
        self._conn().send_packed_command([resp.xack(stream, group, ids)], check_health=False)
        self.tags.append("xack")

    def recv(self) -> tuple[str, object]:
        """The oldest outstanding reply; an error reply raises (it is consumed, so the
        connection stays in step)."""
        tag = self.tags.popleft()
        return tag, self.conn.read_response()

    def reading(self) -> bool:
        return "read" in self.tags

    def reset(self) -> None:
        """After a connection error: drop the connection and what was in flight (entries a
        lost XREADGROUP delivered stay pending for this consumer and are re-read)."""
        if self.conn is not None:
            self.conn.disconnect()
            self.r.connection_pool.release(self.conn)
            self.conn = None
        self.tags.clear()
