"""The host registry: producers announce their host and streams, ingesters and maintenance
find them there (never by SCAN, which a Redis Cluster would have to run on every node)."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from kernelsight import resp, schema

STREAMS_PART = "streams"  # host_key(host, "streams"): the streams a host's producers write


def _register_args(host: str, streams: Iterable[str]) -> list[tuple]:
    streams = list(streams)
    return [("SADD", schema.HOSTS_KEY, host)] + (
        [("SADD", schema.host_key(host, STREAMS_PART), *streams)] if streams else [])


def register(r: redis.Redis, host: str, streams: Iterable[str] = ()) -> None:
    """Announce ``host`` (and the streams its producers write) to ingesters."""
    for args in _register_args(host, streams):
        r.execute_command(*args)


def register_commands(host: str, streams: Iterable[str] = ()) -> list[bytes]:
    """register() as encoded commands, for a round trip of their own (client.roundtrip)."""
    return [resp.command(*args) for args in _register_args(host, streams)]


def known_hosts(r: redis.Redis, also: Iterable[str] = ()) -> list[str]:
    """Every registered host (plus ``also``), sorted; names that cannot be a tag are skipped."""
    found = {h.decode(errors="replace") if isinstance(h, bytes) else h
             for h in r.smembers(schema.HOSTS_KEY)} | set(also)
    return sorted(h for h in found if schema.host_problem(h) is None)


def host_stream_names(r: redis.Redis, host: str) -> list[bytes]:
    """One host's streams: every event type's and accounting, then any other stream its
    producers registered (a newer producer's event type: read, and dead-lettered)."""
    known = [s.encode() for s in schema.host_streams(host)]
    extra = {s for s in r.smembers(schema.host_key(host, STREAMS_PART))} - set(known)
    prefix = schema.stream_key(host, "").encode()
    return known + sorted(s for s in extra if s.startswith(prefix))


def all_streams(r: redis.Redis, also_hosts: Iterable[str] = ()) -> list[bytes]:
    """Every host's streams (see host_stream_names)."""
    return [s for h in known_hosts(r, also_hosts) for s in host_stream_names(r, h)]


