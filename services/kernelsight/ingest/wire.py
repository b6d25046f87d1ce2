"""The ingester's Redis wire: one pipelined connection, the XREADGROUP request and its reply."""

from __future__ import annotations

from collections import deque

import redis

from kernelsight import resp


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


# Replies that say "not now" rather than "never": retried with backoff.
_TRANSIENT_PREFIXES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED",
                       "NOREPLICAS")


def classify(e: redis.RedisError) -> str:
    """``transient`` (connection lost, timeout, server loading...: retry), ``oom`` (Redis at
    maxmemory: back-pressure), ``nogroup`` (the group vanished: recreate it) or ``fatal``
    (no permission, read-only replica, wrong type, bad password...: stop with the reason)."""
    if isinstance(e, redis.AuthenticationError):
        return "fatal"
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse)):
        return "transient"
    if isinstance(e, redis.exceptions.OutOfMemoryError):
        return "oom"
    msg = str(e)
    if msg.startswith("NOGROUP"):
        return "nogroup"
    if msg.startswith(_TRANSIENT_PREFIXES):
        return "transient"
    return "fatal"


def refusal(e: redis.RedisError, url: str) -> str:
    """One line for a fatal refusal: what Redis said and what to do."""
    said = f"{e.__class__.__name__}: {str(e).strip()}"
    if isinstance(e, redis.exceptions.ReadOnlyError):
        hint = "it is a read-only replica now; point KS_REDIS_URL / --redis-url at the primary"
    elif isinstance(e, redis.exceptions.NoPermissionError):
        hint = ("the Redis user lacks a permission the ingester needs; grant it (ACL SETUSER "
                "<user> +@stream +@connection +set +scan +info) or use another user")
    elif isinstance(e, redis.AuthenticationError):
        hint = "set the right password in KS_REDIS_URL"
    elif str(e).startswith("WRONGTYPE"):
        hint = "a key under kernelsight: is not a stream; rename or delete it"
    else:
        hint = "fix the Redis server's state or configuration, then start the ingester again"
    return (f"redis at {url} refused the ingester ({said}); {hint}. Entries not yet "
            "acknowledged stay in Redis and are stored at the next start")
