"""The ingester's Redis wire: one pipelined connection, the XREADGROUP request and its reply."""

from __future__ import annotations

from collections import deque

import redis

from kernelsight import resp, schema


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


class Link:
    """One dedicated connection to one server, and the tags of its replies still to read."""

    def __init__(self, pool) -> None:  # type: ignore[no-untyped-def]
        self.pool = pool
        self.conn = pool.get_connection()
        self.tags: deque[str] = deque()

    def recv(self) -> tuple[str, object]:
        """The oldest outstanding reply; an error reply raises (it is consumed, so the
        connection stays in step)."""
        tag = self.tags.popleft()
        return tag, self.conn.read_response()

    def reading(self) -> bool:
        return "read" in self.tags


class Wire:
    """Dedicated Redis connections with pipelined commands: send now, read the reply later.

    The next XREADGROUP is sent before the current batch is stored, and XACKs are not waited
    on, so Redis gathers and acknowledges entries while this process validates and writes to
    SQLite: one thread, no GIL hand-offs, Redis's work off the critical path.

    One connection on a single Redis; on a Redis Cluster one per master, each command sent to
    the master that serves its key's slot (every key of a command shares the host's hash tag,
    so one slot). A MOVED/ASK or a connection error is an error reply: the caller resets the
    wire, the slot map is re-read (streams.refresh) and the commands are sent again."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.cluster = hasattr(r, "nodes_manager")
        self.links: dict[str, Link] = {}

    @property
    def tags(self) -> bool:
        """Whether any reply is outstanding."""
        return any(lk.tags for lk in self.links.values())

    def link(self, key: bytes | str) -> Link:
        if not self.cluster:
            name, client = "", self.r
        else:
            from redis.exceptions import RedisClusterException

            try:
                node = self.r.get_node_from_key(key)  # type: ignore[attr-defined]
                name, client = node.name, self.r.get_redis_connection(node)  # type: ignore
            except RedisClusterException as e:
                raise redis.ConnectionError(f"redis cluster: {e}") from None
        lk = self.links.get(name)
        if lk is None:
            lk = self.links[name] = Link(client.connection_pool)
        return lk

    def send(self, tag: str, *args: object, key: bytes | str) -> None:
        lk = self.link(key)
        lk.conn.send_command(*args)
        lk.tags.append(tag)

    def send_xack(self, stream: bytes, group: bytes, ids: list[bytes]) -> None:
        """XACK of a whole batch, RESP-encoded by kernelsight.resp: redis-py's generic packing
        of a thousand ids costs more than the rest of the acknowledgement."""
        lk = self.link(stream)
        lk.conn.send_packed_command([resp.xack(stream, group, ids)], check_health=False)
        lk.tags.append("xack")

    def reading(self) -> bool:
        return any(lk.reading() for lk in self.links.values())

    def busy(self) -> list[Link]:
        """The links with replies outstanding."""
        return [lk for lk in self.links.values() if lk.tags]

    def reset(self) -> None:
        """After a connection error: drop the connections and what was in flight (entries a
        lost XREADGROUP delivered stay pending for this consumer and are re-read)."""
        for lk in self.links.values():
            lk.conn.disconnect()
            lk.pool.release(lk.conn)
        self.links.clear()


def read_groups(streams: list[bytes], cluster: bool) -> list[list[bytes]]:
    """The streams one XREADGROUP may cover together: all of them on a single Redis, one
    host's (one hash tag, one slot) on a cluster."""
    if not cluster:
        return [streams] if streams else []
    by_host: dict[str, list[bytes]] = {}
    for s in streams:
        parts = schema.split_key(s)
        by_host.setdefault(parts[0] if parts else s.decode(errors="replace"), []).append(s)
    return list(by_host.values())


# Replies that say "not now" rather than "never": retried with backoff.
_TRANSIENT_PREFIXES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED",
                       "NOREPLICAS", "MOVED", "ASK")


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
    if isinstance(e, (redis.exceptions.AskError, redis.exceptions.TryAgainError,
                      redis.exceptions.ClusterError)):
        return "transient"  # a cluster slot moved (failover) or is moving: re-read the map
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
