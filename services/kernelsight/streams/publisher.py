"""The producer side: Publisher (buffered, counted, self-reconnecting; see the package
docstring)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from itertools import islice

import redis
from redis.exceptions import RedisClusterException

from kernelsight import defaults, resp, schema, streamid
from kernelsight.clock import now_ns
from kernelsight.config import Settings, redact
from kernelsight.streamid import MS_MAX, SEQ_MAX, IdSource, StreamIdOutOfRange
from kernelsight.streams.chunk import (
    CHUNK_LUA,
    CHUNK_MARKER,
    CHUNK_MARKER_TTL_S,
    CHUNK_MAX,
    CHUNK_SHA,
    PROBE_KEY,
    PROBE_TTL_S,
)
from kernelsight.streams.client import (
    FIELD,
    HEALTH_KEY,
    connect,
    encode,
    info_field,
    is_cluster,
    node_client,
    refresh,
    roundtrip,
)
from kernelsight.streams.registry import register, register_commands

log = logging.getLogger(__name__)

# Drop reasons (also shown by the report).
R_BUFFER_FULL = "buffer_full"  # Redis down or stream over its cap for too long
R_UNFLUSHED = "unflushed_at_exit"  # still buffered when the collector had to stop
R_LOST_IN_REDIS = "lost_in_redis_restart"  # Redis lost them and they could not be re-added
R_NO_ID_LEFT = "stream_id_exhausted"  # a stream's top id is at the packable maximum

CONFIRM_INTERVAL_S = 1.0
HEARTBEAT_INTERVAL_S = defaults.HEARTBEAT_S


class Publisher:
    """Buffered, counted, self-reconnecting producer for one collector instance."""

    def __init__(self, settings: Settings, source: str, linger_s: float = 0.0) -> None:
        """``linger_s``: a few buffered rows wait this long for more before flush() sends
        them (the collectors' runner: --publish-linger, default 1 s; 0: at every flush)."""
        self.settings = settings
        self.source = source
        self.host = settings.host
        self.instance = f"{source}@{settings.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client: redis.Redis | None = None
        self._acc_stream = schema.accounting_stream(self.host)
        self._streams: dict[str, str] = {}  # event type -> this host's stream
        self._node = ""  # on a cluster: the master owning this host's slot at the last confirm
        # (stream, payload, event type, entry id). The id is chosen here, once, when the event
        # is produced: a chunk re-sent after an ambiguous failure (sent, reply lost) carries the
        # same ids, so Redis refuses the copies instead of storing them twice.
        self._buf: deque[tuple[str, bytes, str, bytes]] = deque()
        self.linger_s = linger_s
        self._send_at = 0.0  # monotonic: when the oldest buffered row has waited linger_s
        self._ids = IdSource()
        self._lock = threading.Lock()
        # (event_type, metric, reason) -> cumulative value. START_MARK: value 0 (sums over
        # instances stay counts), detail = an id below every id this instance takes, so the
        # report can tell a SIGKILLed predecessor's uncounted rows (stored after its last
        # snapshot) from this instance's own.
        start = ("", schema.START_MARK, "")
        self.counters: dict[tuple[str, str, str], int] = {start: 0}
        self._details: dict[tuple[str, str, str], str] = {
            start: str(schema.stream_id_to_int(self._ids.next()))}
        self._dirty = True
        self._next_accounting = 0.0
        self._backoff = 0.0
        self._retry_at = 0.0
        self._held_until = 0.0
        self.held_back = 0
        self.connected = False
        self.last_error = ""
        self.reconnects = 0
        # Replay window: entries in Redis that the ingest group has not yet acknowledged, per
        # stream, oldest first, as (packed id, payload, event type). If Redis restarts and
        # loses them (no persistence), they are re-added with their original ids; the
        # database's unique stream_id then makes the replay exactly-once.
        self._window: dict[str, deque[tuple[int, bytes, str]]] = {}
        self._window_len = 0
        self._run_id: str | None = None
        self._next_confirm = 0.0
        self._next_beat = 0.0
        self.replayed = 0
        self.resent_dupes = 0
        self._buf_bytes = 0  # payload bytes in _buf, capped by settings.buffer_max_bytes
        self._resend_n = 0  # entries of a chunk whose reply was lost: re-sent exactly
        self._prev_marker: bytes | None = None
        self.oom_refusals = 0
        self._oom = False

    @property
    def _r(self) -> redis.Redis:
        """The client, connected at first use: a cluster client cannot be built while no
        node answers, and a producer must start (and buffer) with Redis down."""
        if self._client is None:
            self._client = connect(self.settings.redis_url)
        return self._client

    def _hr(self) -> redis.Redis:
        """The server holding this host's keys (node_client)."""
        return node_client(self._r, self._acc_stream)

    def _key(self, name: str) -> str:
        return schema.host_key(self.host, name)

    # -- counting -------------------------------------------------------------------------
    def _count(self, event_type: str, metric: str, n: int, reason: str = "") -> None:
        key = (event_type, metric, reason)
        self.counters[key] = self.counters.get(key, 0) + n
        self._dirty = True

    def produced_total(self) -> int:
        return sum(v for (_, m, _), v in self.counters.items() if m == schema.PRODUCED)

    def lost(self, event_type: str, reason: str, n: int) -> None:
        """Events that existed but never reached user space (ring buffer full, map full,
        rate limit): they count as produced and as dropped with ``reason``."""
        if n > 0:
            with self._lock:
                self._count(event_type, schema.PRODUCED, n)
                self._count(event_type, schema.DROPPED, n, reason)

    def status(self, metric: str, detail: str = "", value: int = 1) -> None:
        """Collector lifecycle (started / failed) for the report's verdict."""
        with self._lock:
            key = ("", metric, "")
            self.counters[key] = value
            if detail:
                self._details[key] = detail[:500]
            self._dirty = True

    def _new_id(self) -> bytes:
        """The next entry id: wall clock, strictly increasing, always packable (IdSource)."""
        return self._ids.next()

    @property
    def last_id(self) -> bytes:
        """The newest id this producer has given an entry: waiting until the ingester has
        stored everything up to it waits for this producer's last event."""
        return b"%d-%d" % (self._ids.ms, self._ids.seq)

    # -- publishing -----------------------------------------------------------------------
    def publish(self, event_type: str, rows: Iterable[dict]) -> None:
        stream = self._streams.get(event_type)
        if stream is None:
            stream = self._streams[event_type] = schema.stream_key(self.host, event_type)
        with self._lock:
            n = 0
            cap, cap_bytes = self.settings.buffer_max, self.settings.buffer_max_bytes
            for row in rows:
                n += 1
                if len(self._buf) >= cap or self._buf_bytes >= cap_bytes:
                    self._count(event_type, schema.DROPPED, 1, R_BUFFER_FULL)
                    continue
                payload = encode(row)
                self._buf_bytes += len(payload)
                if not self._buf:
                    self._send_at = time.monotonic() + self.linger_s
                self._buf.append((stream, payload, event_type, self._new_id()))
            self._count(event_type, schema.PRODUCED, n)

    def _accounting_entry(self, mark: bytes) -> bytes:
        """A cumulative snapshot. ``mark`` is the id it takes in this producer's sequence:
        everything it counts has a smaller id, so windowed reports can bound by it."""
        return encode({
            "timestamp": now_ns(), "host": self.host, "instance": self.instance,
            "source": self.source, "mark": schema.stream_id_to_int(mark),
            "counters": [[et, m, r, v, self._details.get((et, m, r), "")]
                         for (et, m, r), v in self.counters.items()],
        })

    def flush(self, final: bool = False, deadline: float | None = None) -> bool:
        """Send what is buffered, oldest first. Returns True when the buffer is empty.
        ``deadline`` (monotonic): stop sending chunks once it has passed."""
        now = time.monotonic()
        if not final and now < self._retry_at:
            return False
        with self._lock:
            if self._dirty and (final or now >= self._next_accounting):
                # Accounting rides in the same ordered buffer, so after a reconnect it is
                # delivered too; it is cumulative, so repeats are harmless.
                eid = self._new_id()
                acc = self._accounting_entry(eid)
                self._buf_bytes += len(acc)
                self._buf.append((self._acc_stream, acc, "", eid))
                self._dirty = False
                self._next_accounting = now + max(defaults.ACCOUNTING_INTERVAL_S,
                                                  self.settings.interval)
            idle = not self._buf
            # A few rows wait up to linger_s for more (a quiet host's tracers publish a few
            # rows per poll: one XADD, one ingest batch and one commit each otherwise).
            lingering = (not idle and not final and now < self._send_at
                         and len(self._buf) < CHUNK_MAX)
        if (idle or lingering) and self.connected and now < self._next_beat:
            # Nothing to send yet: no round trip. Entries still awaiting the ingester's
            # acknowledgement are confirmed (replayed if Redis lost them) before the next
            # send or with the next heartbeat, whichever comes first.
            return idle
        try:
            if self._node and self._node != self._node_now():
                self.connected = False  # the host's slot moved (failover): confirm first
            if not self.connected or (now >= self._next_confirm and (self._window_len or
                                                                       self._buf)):
                # With nothing sent and nothing awaiting acknowledgement there is nothing
                # to confirm or replay: an idle producer makes no round trip for it.
                self._next_confirm = now + CONFIRM_INTERVAL_S
                self._confirm()
            while self._buf and not lingering:
                if now < self._held_until and not final:
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                # After a lost reply, exactly the same entries again (their marker tells).
                self._resend_n = self._resend_n or CHUNK_MAX
                chunk = list(islice(self._buf, self._resend_n))
                streams = sorted({c[0] for c in chunk})
                ids, lengths = self._xadd_all(chunk, streams)
                self._resend_n = 0
                with self._lock:
                    for _ in chunk:
                        self._buf_bytes -= len(self._buf.popleft()[1])
                self._remember(chunk, ids)
                # Back-pressure: a stream over its cap means the ingester is behind; hold
                # further entries here (bounded, counted) rather than grow Redis without end.
                if max(lengths) >= self.settings.stream_maxlen:
                    self._held_until = now + 0.5
                    self.held_back += 1
            if self._oom:
                self._oom = False
                log.warning("redis accepts writes again (below maxmemory)")
            if not self.connected:
                if self.last_error:
                    self.reconnects += 1
                    log.warning("redis reachable again at %s", redact(self.settings.redis_url))
                self.connected = True
            self._backoff = 0.0
            if now >= self._next_beat:
                self._next_beat = now + HEARTBEAT_INTERVAL_S
                self._heartbeat()
        except redis.exceptions.OutOfMemoryError:
            self._note_oom(now)
            return False
        except (redis.RedisError, RedisClusterException) as e:
            self._note_failure(e)
            return False
        return not self._buf

    def _node_now(self) -> str:
        """The cluster node owning this host's slot now ("" on a single Redis)."""
        if not self._cluster:
            return ""
        return self._r.get_node_from_key(self._acc_stream).name  # type: ignore[attr-defined]

    @functools.cached_property
    def _cluster(self) -> bool:
        return is_cluster(self.settings.redis_url)

    def _note_oom(self, now: float) -> None:
        """Redis at maxmemory (noeviction) refused the chunk, atomically: back-pressure. The
        events stay buffered (bounded, drops counted as buffer_full) and are retried."""
        self.oom_refusals += 1
        self.connected = True  # it answered
        with self._lock:
            self._count("", "redis_oom", 1)
        if not self._oom:
            self._oom = True
            log.warning("redis is at maxmemory: holding events here (%d buffered, cap %d "
                        "events / %d bytes) until the ingester frees memory", len(self._buf),
                        self.settings.buffer_max, self.settings.buffer_max_bytes)
        self._held_until = now + 0.5

    def _xadd_all(self, chunk: list[tuple[str, bytes, str, bytes]],
                  streams: list[str]) -> tuple[list[bytes | None], list[int]]:
        """One chunk through CHUNK_LUA: the entry ids as stored (None: no packable id was
        left on its stream, counted as dropped) and each stream's length.

        Encoded by kernelsight.resp rather than by redis-py, whose per-argument packing costs
        more than Redis's own work."""
        marker = self._key(CHUNK_MARKER.format(instance=self.instance,
                                               first=chunk[0][3].decode())).encode()
        index = {st: resp.bulk(b"%d" % (i + 3)) for i, st in enumerate(streams)}
        body = b"".join([b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            index[stream], len(eid), eid, len(payload), payload)
            for stream, payload, _, eid in chunk])
        head: list[bytes | str | int] = [b"EVALSHA", CHUNK_SHA, len(streams) + 2, marker,
                                         self._prev_marker or marker, *streams,
                                         CHUNK_MARKER_TTL_S, SEQ_MAX, MS_MAX]
        packed = resp.command_packed(head, 3 * len(chunk), body)
        try:
            res = self._send_chunk(packed)
        except redis.exceptions.NoScriptError:
            self._hr().script_load(CHUNK_LUA)
            res = self._send_chunk(packed)
        before, moved, lengths = res
        self._prev_marker = marker
        ids: list[bytes | None] = [c[3] for c in chunk]
        self.resent_dupes += before
        for m in moved.split():
            i, _, nid = m.partition(b":")
            k = int(i) - 1
            if nid:
                ids[k] = nid
                with contextlib.suppress(StreamIdOutOfRange):
                    self._ids.advance_past(nid)
            else:
                ids[k] = None
                et = chunk[k][2]
                if et:
                    with self._lock:
                        self._count(et, schema.DROPPED, 1, R_NO_ID_LEFT)
        return ids, lengths

    def _send_chunk(self, packed: bytes) -> list:
        res = roundtrip(self._hr(), packed)[0]
        if isinstance(res, Exception):
            raise res  # a reply: the connection is in step
        if not isinstance(res, list) or len(res) != 3:
            raise redis.ResponseError(f"chunk script returned {res!r}")
        return res

    # -- replay window --------------------------------------------------------------------
    def _remember(self, chunk: list[tuple[str, bytes, str, bytes]],
                  ids: list[bytes | None]) -> None:
        for (stream, payload, et, _), eid in zip(chunk, ids, strict=True):
            if not et or eid is None:
                continue  # accounting snapshots are cumulative: the next one replaces it
            self._window.setdefault(stream, deque()).append(
                (schema.stream_id_to_int(eid), payload, et))
            self._window_len += 1
        # Bounded: past the bound the oldest entries are only as safe as Redis's own
        # persistence. Counted, so a long ingester outage is visible.
        while self._window_len > self.settings.buffer_max:
            longest = max(self._window.values(), key=len)
            longest.popleft()
            self._window_len -= 1
            self._count("", "replay_window_evicted", 1)

    def _confirm(self) -> None:
        """Forget entries the group has acknowledged; replay any that Redis lost.

        After a restart, a probe key this producer set at its previous confirmation says
        whether Redis kept its data (AOF/RDB): then the restored group state first removes
        what was stored, acknowledged and trimmed meanwhile (absent from the stream, yet not
        lost); only the rest is replayed."""
        node = self._node_now()
        info, old = roundtrip(self._hr(), resp.command(b"INFO", b"server"), resp.command(
            b"SET", self._key(PROBE_KEY.format(instance=self.instance)), b"1", b"EX",
            PROBE_TTL_S, b"GET"), retry=True)
        if isinstance(info, Exception):
            raise info
        run_id = info_field(info, b"run_id")
        if not run_id:
            raise redis.ResponseError("INFO server has no run_id")
        if self._run_id is None:
            self._register()  # before the first entry: ingesters and backlog() see this host
        if self._run_id is not None and run_id != self._run_id:
            # On a cluster, a failover: the promoted replica has what was replicated to it
            # before the master died (asynchronous replication), the rest is re-added here.
            kept = old is not None and not isinstance(old, Exception)
            log.warning("redis %s (run_id changed, data %s); checking for lost entries",
                        f"failed over to {node}" if node else "restarted",
                        "kept" if kept else "lost")
            if kept:
                self._forget_acknowledged()
            self._recover()
            self._register()
        self._run_id = run_id
        self._node = node
        self._forget_acknowledged()

    def _forget_acknowledged(self) -> None:
        """Drop from the replay window what the ingest group has acknowledged."""
        streams = [s for s, d in self._window.items() if d]
        if not streams:
            return
        pipe = self._hr().pipeline(transaction=False)
        for st in streams:
            pipe.xinfo_groups(st)
            pipe.xpending(st, schema.INGEST_GROUP)
        res = pipe.execute(raise_on_error=False)
        for i, st in enumerate(streams):
            groups, pend = res[2 * i], res[2 * i + 1]
            if isinstance(groups, Exception) or isinstance(pend, Exception):
                continue
            g = next((g for g in groups if g["name"] in (schema.INGEST_GROUP,
                                                          schema.INGEST_GROUP.encode())), None)
            if not g:
                continue
            mark = schema.stream_id_to_int(g["last-delivered-id"]) + 1
            if pend and pend.get("pending"):
                mark = min(mark, schema.stream_id_to_int(pend["min"]))
            d = self._window[st]
            while d and d[0][0] < mark:
                d.popleft()
                self._window_len -= 1

    def _recover(self) -> None:
        """Re-add the window's entries Redis no longer has, with their original ids."""
        for st, d in self._window.items():
            if not d:
                continue
            lo, hi = schema.int_to_stream_id(d[0][0]), schema.int_to_stream_id(d[-1][0])
            hr = self._hr()
            present = {streamid.parse(e[0])
                       for e in hr.xrange(st, lo, hi, count=len(d) + 10)}
            missing = [e for e in d if divmod(e[0], 1 << streamid.SEQ_BITS) not in present]
            if not missing:
                continue
            pipe = hr.pipeline(transaction=False)
            for eid, payload, _ in missing:
                pipe.xadd(st, {FIELD: payload}, id=schema.int_to_stream_id(eid))
            res = pipe.execute(raise_on_error=False)
            ok = 0
            for (_, _, et), r in zip(missing, res, strict=True):
                if isinstance(r, Exception):  # another producer already wrote newer ids
                    self._count(et, schema.DROPPED, 1, R_LOST_IN_REDIS)
                else:
                    ok += 1
            self.replayed += ok
            self._count("", "replayed", ok)
            log.warning("re-added %d of %d entries Redis lost from %s", ok, len(missing), st)

    def _note_failure(self, e: Exception) -> None:
        if self.connected or not self.last_error:
            log.warning("redis unavailable at %s (%s); buffering up to %d events",
                        redact(self.settings.redis_url), e, self.settings.buffer_max)
        self.connected = False
        self.last_error = str(e)
        if self._client is not None:
            refresh(self._client)
        self._backoff = min(max(self._backoff * 2, 0.1), 5.0)
        self._retry_at = time.monotonic() + self._backoff

    def _heartbeat(self) -> None:
        """The health key and, again at each beat, the host registry (a restarted Redis or
        a promoted replica may have lost it, and ingesters find hosts only there): one
        pipelined round trip."""
        beat = encode({"instance": self.instance, "timestamp": now_ns()})
        try:
            if self._cluster:  # the health key and the host's keys are in different slots
                pipe = self._r.pipeline(transaction=False)
                pipe.set(HEALTH_KEY.format(source=self.source), beat,
                         ex=defaults.HEALTH_TTL_S)
                register(pipe, self.host, self._streams.values())
                pipe.execute()
            else:
                roundtrip(self._r, *register_commands(self.host, self._streams.values()),
                          resp.command(b"SET", HEALTH_KEY.format(source=self.source), beat,
                                       b"EX", defaults.HEALTH_TTL_S), retry=True)
        except (redis.RedisError, RedisClusterException):
            pass

    def _register(self) -> None:
        register(self._r, self.host, self._streams.values())

    def _ran_in_doubt(self) -> int:
        """How many entries at the head of the buffer Redis ran although their reply was lost
        (the chunk in doubt; its marker key says): they are in Redis, so they are not
        unflushed. 0 when no chunk is in doubt or Redis cannot tell now."""
        if not self._resend_n or not self._buf:
            return 0
        key = self._key(CHUNK_MARKER.format(instance=self.instance,
                                            first=self._buf[0][3].decode()))
        try:
            done = self._hr().get(key)
        except (redis.RedisError, RedisClusterException):
            return 0
        if not done:
            return 0
        return min(int(done.split(b"|", 1)[0]), self._resend_n, len(self._buf))

    def _unconfirmed_at_exit(self, end: float) -> bool:
        """On a cluster, before the replay window goes with this process: are its entries safe
        from a failover? Yes once the ingest group has acknowledged them (stored), or once the
        master's replica has everything up to now (a probe SET, then WAIT 1 on the same
        connection: replication is in order, so the replica acknowledging the SET's offset has
        every earlier write). Otherwise they are counted (``replay_window_unconfirmed``,
        returns True): a failover before they are stored would lose them."""
        if not self._cluster or not self._window_len:
            return False
        with contextlib.suppress(redis.RedisError, RedisClusterException):
            self._forget_acknowledged()
            if not self._window_len:
                return False
            pipe = self._hr().pipeline(transaction=False)
            pipe.set(self._key(PROBE_KEY.format(instance=self.instance)), b"1", ex=PROBE_TTL_S)
            wait_ms = min(1000, max(100, int((end - time.monotonic()) * 1000)))
            pipe.execute_command("WAIT", 1, wait_ms)
            if pipe.execute()[1] >= 1:
                return False
        with self._lock:
            self._count("", "replay_window_unconfirmed", self._window_len)
        log.warning("%d entries are neither stored nor confirmed replicated at exit: a "
                    "failover of their master before the ingester stores them loses them "
                    "(counted as replay_window_unconfirmed)", self._window_len)
        return True

    def close(self, deadline_s: float = 5.0) -> None:
        """Flush everything, retrying until the deadline; count what could not be sent, and
        deliver the accounting that says so (also when a long backlog is still buffered: the
        deadline bounds the flush, not only the retries)."""
        end = time.monotonic() + deadline_s
        checked = False
        while True:
            self._retry_at = 0.0
            if self.flush(final=True, deadline=end) and not self._dirty:
                if checked or not self._unconfirmed_at_exit(end):
                    break
                checked = True
                continue  # deliver the accounting that counts them
            if time.monotonic() >= end:
                ran = self._ran_in_doubt()
                with self._lock:
                    for i, (_, _, et, _) in enumerate(self._buf):
                        if et and i >= ran:
                            self._count(et, schema.DROPPED, 1, R_UNFLUSHED)
                    self._buf.clear()
                    self._buf_bytes = 0
                    self._resend_n = 0
                # One last try to deliver the accounting that says so.
                try:
                    eid = self._new_id()
                    self._xadd_all([(self._acc_stream, self._accounting_entry(eid), "",
                                     eid)], [self._acc_stream])
                except (redis.RedisError, RedisClusterException):
                    log.error("could not deliver final accounting for %s", self.instance)
                break
            time.sleep(0.1)
        if self._client is not None:
            self._client.close()
