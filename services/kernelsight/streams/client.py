"""Connecting to Redis or a Redis Cluster, and reading entries: what every side of the transport
shares (producers, the ingester, status, maintenance)."""

from __future__ import annotations

import contextlib

import orjson
import redis

from kernelsight.config import CLUSTER_SCHEME, cluster_nodes, redact
from kernelsight.exceptions import RedisUnavailable

FIELD = b"d"  # each entry's one field: the event as JSON
HEALTH_KEY = "kernelsight:health:{source}"

encode = orjson.dumps
decode = orjson.loads


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME + "://")


def connect(url: str, timeout: float = 5.0) -> redis.Redis:
    """A client that fails fast: socket timeouts so a dead server is noticed, not waited on.
    ``redis+cluster://`` gives a RedisCluster (redis.RedisError when no seed answers)."""
    if is_cluster(url):
        from redis.cluster import ClusterNode, RedisCluster
        from redis.exceptions import RedisClusterException

        password, nodes = cluster_nodes(url)
        try:
            return RedisCluster(  # type: ignore[return-value]
                startup_nodes=[ClusterNode(h, p) for h, p in nodes], password=password,
                socket_connect_timeout=timeout, socket_timeout=max(timeout, 10.0),
                decode_responses=False, require_full_coverage=False)
        except RedisClusterException as e:
            raise redis.ConnectionError(f"redis cluster: {e}") from None
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=max(timeout, 10.0),
        health_check_interval=0, decode_responses=False)


def roundtrip(r: redis.Redis, *commands: bytes, retry: bool = False) -> list:
    """Commands already encoded (kernelsight.resp) in one round trip on one pooled connection
    of a plain client (not a cluster's: see node_client), their replies in order; an error
    reply is returned as its exception, not raised (the connection is still in step).
    ``retry``: commands that may run twice (INFO, SET, SADD) are sent once more on a fresh
    connection after a connection error, as redis-py does (a pooled connection to a server
    that restarted meanwhile fails once).

    The producers' per-second commands go this way: redis-py's pipeline and per-command
    machinery (argument inspection, response callbacks, INFO parsing) cost more Python than
    these few small commands, every second, in every producer."""
    pool = r.connection_pool
    for attempt in (1, 2):
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(commands)], check_health=False)
            out: list = []
            for _ in commands:
                try:
                    out.append(conn.read_response())
                except redis.ResponseError as e:
                    out.append(e)
            return out
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            if not retry or attempt == 2:
                raise
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
    raise AssertionError("unreachable")


def info_field(info: bytes, name: bytes) -> str | None:
    """One field of an INFO reply as Redis sends it (``name:value`` lines)."""
    for line in info.split(b"\r\n"):
        if line.startswith(name + b":"):
            return line[len(name) + 1:].decode()
    return None


def refresh(r: redis.Redis) -> None:
    """After an error on a cluster: re-read the slot map (a failover moved a master). Never
    raises: while no node answers, the caller's next command fails and is retried."""
    nm = getattr(r, "nodes_manager", None)
    if nm is not None:
        with contextlib.suppress(Exception):
            nm.initialize()


def node_client(r: redis.Redis, key: str | bytes) -> redis.Redis:
    """A plain client for the server that owns ``key``'s slot: ``r`` itself on a single Redis,
    on a cluster the master serving the slot now (pipelines and raw connections on it are
    single-slot when their keys share the host's hash tag; a MOVED reply is an error)."""
    if not hasattr(r, "nodes_manager"):
        return r
    from redis.exceptions import RedisClusterException

    try:
        return r.get_redis_connection(r.get_node_from_key(key))  # type: ignore[attr-defined]
    except RedisClusterException as e:
        raise redis.ConnectionError(f"redis cluster: {e}") from None


def mget(r: redis.Redis, keys: list) -> list:
    """MGET of keys in any slots: one MGET on a single Redis, one per slot on a cluster."""
    if not keys:
        return []
    return r.mget_nonatomic(keys) if hasattr(r, "mget_nonatomic") else r.mget(keys)


def ping(url: str, timeout: float = 2.0) -> redis.Redis:
    r = connect(url, timeout)
    try:
        r.ping()
    except redis.AuthenticationError:
        raise RedisUnavailable(
            f"Redis at {redact(url)} refused the password; set KS_REDIS_URL with the right one"
        ) from None
    except redis.RedisError as e:
        raise RedisUnavailable(
            f"cannot reach Redis at {redact(url)} ({e.__class__.__name__}: {e}); "
            "start redis-server or set KS_REDIS_URL / --redis-url") from None
    return r


def payload_of_fields(fields: dict | list | None) -> bytes | None:
    """The ``d`` field of an entry as redis-py returns it (a dict) or raw (a flat list)."""
    if fields is None:
        return None
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2], strict=False))
    return fields.get(FIELD)
