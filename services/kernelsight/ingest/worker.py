"""The ingestion worker: Redis streams -> SQLite, exactly once.

Reads every event stream through one consumer group, batches (``batch_size`` entries or
``batch_ms``, whichever first), validates each entry against the schema, inserts the batch in
one SQLAlchemy Core transaction, and XACKs only after the commit. Every table has a unique
``stream_id``; inserts are ``INSERT OR IGNORE``, so an entry delivered twice (crash between
commit and XACK, or a reclaimed pending entry) is stored once. A malformed entry never stops the
batch: it goes to the ``dead_letters`` table and the dead-letter stream with its reason.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections import defaultdict
from contextlib import nullcontext

import orjson
import redis
from redis.exceptions import RedisClusterException

from kernelsight import defaults, schema
from kernelsight.clock import now_ns
from kernelsight.config import Settings, is_db_url, redact
from kernelsight.db import Checkpointer
from kernelsight.exceptions import RedisRefused, RedisUnavailable
from kernelsight.ingest import reclaim
from kernelsight.ingest.accounting import ChangedOnly
from kernelsight.ingest.events import Events
from kernelsight.ingest.progress import drained_until
from kernelsight.ingest.retention import trim_acknowledged
from kernelsight.ingest.validate import (
    MAX_ENTRY_BYTES,
    VALIDATORS,
    BadEntry,
    accounting_rows,
    bad_stream_id,
    dead_letter_row,
    validate_entry,
)
from kernelsight.ingest.wire import Link, Wire, classify, read_groups, refusal, xreadgroup_args
from kernelsight.ingest.wire import entries as read_entries
from kernelsight.ingest.writer import IngestStats, WriteLock, Writer
from kernelsight.maintenance import Maintenance
from kernelsight.streamid import PACKED_MAX, SEQ_MAX
from kernelsight.streams import FIELD, HEALTH_KEY, connect, refresh

log = logging.getLogger(__name__)

DISCOVER_S = 2.0  # how often the host registry is read
LINGER_SLICE_S = 0.2  # a stop request ends a linger within this


class Ingester:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.stats = IngestStats()
        self.writer = Writer(settings.db_path, self.stats)
        self.engine = self.writer.engine
        self.checkpointer: Checkpointer | None = None
        # Rollups and retention run in one process per database: the single ingester, or
        # worker 1 of a pool (the supervisor turns it off in the others).
        self.maintain = True
        self.maintenance: Maintenance | None = None
        try:
            self.r = connect(settings.redis_url)  # a cluster client asks a node here
        except redis.RedisError as e:
            raise RedisUnavailable(
                f"cannot reach Redis at {redact(settings.redis_url)} ({e}); start it or set "
                "KS_REDIS_URL") from None
        self.group = schema.INGEST_GROUP
        self.consumer = settings.consumer
        self.instance = f"ingest@{settings.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = False
        self._draining = False
        self._drain_mark = 0  # epoch ms: a drain stores everything up to it
        self._last_trim = 0.0
        self._trim_batches = -1
        self._last_beat = 0.0
        self._last_tick = 0.0
        self._idle_reads = 0  # consecutive reads that returned nothing
        self._read_at = 0.0  # monotonic: when the last read was sent
        self._next_read = 0.0  # monotonic: after a small batch, no read before this
        self._last_reclaim = 0.0
        self._last_accounting = 0.0
        self.streams: list[bytes] = []  # every host's streams (discover)
        # stream -> (its host's dead-letter stream, validator or None, is accounting)
        self._kinds: dict[bytes, tuple[str, tuple | None, bool]] = {}
        self._last_discover = 0.0
        self.wire = Wire(self.r)
        self._recover_pending = True
        self._need_groups = True
        self._started = False
        self.events: Events = Events()  # sd_notify / supervisor pipe / histogram hooks
        self._told_stopping = False
        self._acc_batches = 0  # batches the last accounting snapshot includes
        self.acc_changed = ChangedOnly()
        # Keep XREADGROUP's reply raw (nested lists): redis-py's conversion of every entry's
        # fields into a dict is pure overhead here.
        self.r.set_response_callback("XREADGROUP", lambda resp, **_: resp)

    # -- setup ----------------------------------------------------------------------------
    def ensure_groups(self) -> None:
        """The group on every stream read (discover creates it on streams found later)."""
        if not self.streams:
            self.discover()
        for s in self.streams:
            try:
                # From 0, so events published before the group existed are not skipped.
                self.r.xgroup_create(s, self.group, id="0", mkstream=True)
            except redis.exceptions.OutOfMemoryError:
                # XGROUP CREATE is refused at maxmemory even when the group exists.
                if not reclaim.has_group(self.r, s, self.group):
                    raise RedisRefused(
                        f"redis at {redact(self.s.redis_url)} is at maxmemory, so the consumer "
                        f"group cannot be created on {s.decode()}; raise maxmemory (CONFIG SET "
                        "maxmemory) or free memory, then start the ingester again") from None
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def check_redis(self) -> None:
        try:
            self.r.ping()
        except redis.RedisError as e:
            raise RedisUnavailable(
                f"cannot reach Redis at {redact(self.s.redis_url)} ({e}); start redis-server or "
                "set KS_REDIS_URL") from None

    # -- reading --------------------------------------------------------------------------
    def _xreadgroup(self, streams: list[bytes], ids: str, block: int | None,
                    count: int) -> list:
        return xreadgroup_args(self.group, self.consumer, streams, ids, block, count)

    def _read(self, ids: str, block: int | None, count: int) -> list:
        """A synchronous read (start-up and recovery; the main loop pipelines its reads): one
        XREADGROUP per read group (read_groups), their entries together."""
        out: list = []
        for streams in read_groups(self.streams, self.wire.cluster):
            out += read_entries(self.r.execute_command(
                *self._xreadgroup(streams, ids, block, count)))
        return out

    def discover(self) -> None:
        """Every registered host's streams, groups created on new ones (reclaim.discover)."""
        self.streams = reclaim.discover(self.r, self.group, self.s.host, self.streams)

    def _kind(self, stream: bytes) -> tuple[str, tuple | None, bool]:
        parts = schema.split_key(stream)
        host, name = parts if parts else (self.s.host, "")
        kind = (schema.deadletter_stream(host),
                VALIDATORS.get(name.removeprefix(schema.EVENTS_PART))
                if name.startswith(schema.EVENTS_PART) else None,
                name == schema.ACCOUNTING_PART)
        if len(self._kinds) > 100_000:
            self._kinds.clear()
        self._kinds[stream] = kind
        return kind

    def _own_pending(self) -> None:
        reclaim.own_pending(self)

    def _autoclaim(self) -> None:
        reclaim.autoclaim(self)

    # -- the batch ------------------------------------------------------------------------
    def _process(self, got: list) -> int:
        """Validate a batch, store it, then acknowledge it (the XACK is pipelined: its reply
        is read later, nothing waits on it)."""
        t0 = time.perf_counter()
        n, rows, acc, dead, ack = self._prepare(got)
        if not n:
            return 0
        self._commit(rows, acc, dead)
        for d in dead:
            dl = (self._kinds.get(d["stream"].encode()) or self._kind(d["stream"].encode()))[0]
            self.wire.send("xadd", "XADD", dl, "MAXLEN", "~", 100_000,
                           "*", "stream", d["stream"], "id", d["entry_id"],
                           "reason", d["reason"], "payload", d["payload"][:1024], key=dl)
        group = self.group.encode()
        for stream, ids in ack.items():
            self.wire.send_xack(stream, group, ids)
        self.stats.batches += 1
        self.events.batch(time.perf_counter() - t0)
        return n

    def _prepare(self, got: list) -> tuple:
        rows: dict[str, list[tuple]] = defaultdict(list)
        acc: list[dict] = []
        dead: list[dict] = []
        ack: dict[bytes, list[bytes]] = defaultdict(list)
        loads = orjson.loads
        seq_max, packed_max = SEQ_MAX, PACKED_MAX  # locals: this loop runs once per event
        n = 0
        for stream, entries in got:
            n += len(entries)
            ack[stream].extend([e[0] for e in entries])
            _, vt, is_acc = self._kinds.get(stream) or self._kind(stream)
            if vt is None:
                for eid, fields in entries:
                    if is_acc:
                        try:
                            acc.extend(accounting_rows(fields))
                        except (BadEntry, orjson.JSONDecodeError, ValueError) as e:
                            dead.append(dead_letter_row(stream, eid, fields, e))
                    else:
                        dead.append(dead_letter_row(stream, eid, fields, BadEntry(
                            "unknown_event_type", stream.decode(errors="replace"))))
                continue
            validate = vt[1]
            out = rows[vt[0].name]
            # The hot loop: one entry per event, so nothing here that is not needed.
            for eid, fields in entries:
                try:
                    ms, _, seq = eid.partition(b"-")
                    sq = int(seq)
                    sid = int(ms) << 19 | sq  # streamid.SEQ_BITS
                    if sq > seq_max or sid > packed_max:  # would collide or overflow
                        raise BadEntry("bad_stream_id", bad_stream_id(eid))
                    if type(fields) is list and len(fields) == 2 and fields[0] == FIELD \
                            and len(fields[1]) <= MAX_ENTRY_BYTES:
                        out.append(validate(loads(fields[1]), sid))
                    else:
                        out.append(validate_entry(validate, fields, sid))
                except (BadEntry, orjson.JSONDecodeError, ValueError) as e:
                    dead.append(dead_letter_row(stream, eid, fields, e))
        return n, {k: v for k, v in rows.items() if v}, acc, dead, ack

    def _commit(self, rows: dict[str, list[tuple]], acc: list[dict], dead: list[dict]) -> None:
        """One transaction. Accounting rows that repeat what is stored are left out
        (ingest/accounting.py), producers' and the ingester's own alike."""
        acc, upd = self.acc_changed.changed(acc)
        own_upd: dict = {}

        def own(rows_: dict, dead_: list) -> list[dict]:
            out, u = self.acc_changed.changed(self._own_accounting(rows_, dead_))
            own_upd.clear()  # a retried transaction asks again
            own_upd.update(u)
            return out

        self.writer.commit(rows, acc, dead, own, lambda: self._stop and not self._draining)
        self.acc_changed.commit(upd)
        self.acc_changed.commit(own_upd)

    def _own_accounting(self, rows: dict, dead: list) -> list[dict]:
        """The ingester's counters, as cumulative accounting rows (every
        INGEST_ACCOUNTING_INTERVAL_S)."""
        now = time.monotonic()
        if (now - self._last_accounting < defaults.INGEST_ACCOUNTING_INTERVAL_S
                and not self._draining):
            return []
        self._last_accounting = now
        base = {"timestamp": now_ns(), "host": self.s.host, "instance": self.instance,
                "source": "ingest", "detail": None}
        st = self.stats
        out = [{**base, "event_type": "", "metric": m, "reason": "", "value": v}
               for m, v in (("lock_retries", st.lock_retries), ("db_errors", st.db_errors),
                            ("reclaimed", st.reclaimed), ("redis_errors", st.redis_errors),
                            ("redis_oom", st.redis_oom))]
        # Per event type, for /metrics (kernelsight_ingest_events_stored_total): counting rows
        # at scrape time would scan big tables, and go down once retention deletes rows.
        out += [{**base, "event_type": et, "metric": m, "reason": "", "value": v}
                for m, counter in (("stored", st.stored), ("duplicates", st.duplicates))
                for et, v in counter.items()]
        self._acc_batches = st.batches
        return out


    # -- trimming -------------------------------------------------------------------------
    def trim(self) -> None:
        """Cap streams to acknowledged entries (see retention.trim_acknowledged)."""
        trim_acknowledged(self.r, self.group, self.s.stream_retain, self.streams)

    # -- main loop ------------------------------------------------------------------------
    def request_stop(self, drain: bool = True) -> None:
        """``drain``: store everything produced up to now first (a later entry, from producers
        that keep running, is left for the next ingester)."""
        if drain and not self._stop:
            self._drain_mark = time.time_ns() // 1_000_000
        self._stop = True
        self._draining = drain

    def run(self, idle_exit_s: float | None = None) -> IngestStats:
        """Loop until stopped. On a drain stop, keep going until every stream is empty and
        nothing is pending, then return.

        Lost connections, timeouts and a Redis at maxmemory are retried with backoff and
        counted; a refusal retrying cannot fix (NOPERM, READONLY, WRONGTYPE...) raises
        RedisRefused, so the process exits non-zero, its entries still pending in Redis."""
        self.check_redis()
        sqlite = not is_db_url(self.s.db_path)  # WAL checkpoints and the flock: SQLite only
        self.checkpointer = Checkpointer(self.s.db_path).start() if sqlite else None
        if self.maintain:
            self.maintenance = Maintenance.for_settings(
                self.s, (lambda: WriteLock(self.s.db_path)) if sqlite else nullcontext).start()
        try:
            self._loop(idle_exit_s)
            self._settle()
        except redis.RedisError as e:
            if classify(e) == "fatal":
                raise RedisRefused(refusal(e, redact(self.s.redis_url))) from None
            # Stopping now (a second signal) while Redis is unreachable: what was in flight
            # stays pending and is read at the next start.
            log.warning("redis unavailable at stop (%s); undelivered entries stay pending", e)
        finally:
            self.wire.reset()
            # Final accounting snapshot, then the last checkpoint.
            try:
                self._last_accounting = 0.0
                self._draining = True
                self._commit({}, [], [])
            finally:
                if self.maintenance:
                    self.maintenance.stop()
                if self.checkpointer:
                    self.checkpointer.stop()
        return self.stats

    def _recover(self) -> None:
        """Start-up, and after any Redis error: groups (if they may be missing), then what
        was delivered to this consumer but not acknowledged."""
        if self._need_groups:
            self.discover()
            self.ensure_groups()
            self._need_groups = False
        self._settle()
        self._own_pending()
        if not self._started:
            self._autoclaim()
            self._last_reclaim = time.monotonic()
            self._started = True
            self.events.ready(self)  # groups exist, own pending entries re-read
        self._recover_pending = False

    def _loop(self, idle_exit_s: float | None) -> None:
        idle_since = time.monotonic()
        backoff = 0.0
        self._recover_pending = True
        while True:
            try:
                if self._recover_pending:
                    self._recover()
                n = self._batch()
                now = time.monotonic()
                if self._stop and not self._told_stopping:
                    self._told_stopping = True
                    self.events.stopping(self)
                if self._stop and not self._draining:
                    break
                if n:
                    idle_since = now
                elif self._stop:
                    self._settle()
                    # Pending alone is not enough: an entry added just before the stop
                    # request can be undelivered while the read sent ahead came back empty.
                    if self._pending_total() == 0 and drained_until(
                            self.r, self._drain_mark, self.group, self.streams):
                        break
                elif idle_exit_s is not None and now - idle_since >= idle_exit_s:
                    break
                self._maintain(now)
                backoff = 0.0
            except (redis.RedisError, RedisClusterException) as e:
                # Every Redis call of the loop, maintenance included, lands here.
                if not isinstance(e, redis.RedisError):  # the cluster client's own
                    e = redis.ConnectionError(f"redis cluster: {e}")
                self.wire.reset()
                refresh(self.r)  # a cluster: re-read the slot map (a failover moved it)
                self._recover_pending = True
                kind = classify(e)
                if kind == "fatal":
                    raise
                self._need_groups = True
                if kind == "nogroup":
                    log.warning("consumer group missing (Redis restarted?); recreating it")
                    continue
                if kind == "oom":
                    self.stats.redis_oom += 1
                else:
                    self.stats.redis_errors += 1
                backoff = min(max(backoff * 2, 0.2), 5.0)
                log.warning("redis %s (%s); retrying in %.1fs",
                            "at maxmemory" if kind == "oom" else "unavailable", e, backoff)
                time.sleep(backoff)
                if self._stop and not self._draining:
                    break

    def _maintain(self, now: float) -> None:
        """Heartbeat every HEARTBEAT_S; trim about once a second while batches come in (at
        idle nothing grows: every TRIM_IDLE_S); every 10 s: reclaim and discover."""
        if now - self._last_beat >= defaults.HEARTBEAT_S:
            self._last_beat = now
            self._heartbeat()
        if now - self._last_tick >= 1.0:  # sd_notify watchdog / supervisor: no Redis
            self._last_tick = now
            self.events.beat(self)
        if now - self._last_trim > 1.0 and (self.stats.batches != self._trim_batches
                                            or now - self._last_trim > defaults.TRIM_IDLE_S):
            self._last_trim = now
            self._trim_batches = self.stats.batches
            self.trim()
        if (self.stats.batches != self._acc_batches
                and now - self._last_accounting >= defaults.INGEST_ACCOUNTING_INTERVAL_S):
            # Idle: record the last batches' counts now rather than at the next batch,
            # so /metrics and `status` are at most one accounting interval behind.
            self._last_accounting = 0.0
            self._commit({}, [], [])
        if now - self._last_discover > DISCOVER_S:
            self._last_discover = now
            self.discover()  # a new host's streams are read within DISCOVER_S
        if now - self._last_reclaim > 10.0:
            self._last_reclaim = now
            self._autoclaim()

    def _send_read(self, block: int | None) -> None:
        """One XREADGROUP per read group. On a cluster several hosts' reads can share a
        master's connection, where they run one after the other: only the last read sent
        on each connection blocks, so an idle host never delays another's entries by more
        than one block."""
        groups = read_groups(self.streams, self.wire.cluster)
        last: dict[int, int] = {}
        if block is not None:
            for i, streams in enumerate(groups):
                last[id(self.wire.link(streams[0]))] = i
        for i, streams in enumerate(groups):
            lk = self.wire.link(streams[0])
            self.wire.send("read", *self._xreadgroup(
                streams, ">", block if last.get(id(lk)) == i else None, self.s.batch_size),
                key=streams[0])

    def _recv_read(self) -> list:
        """Read replies up to the outstanding XREADGROUPs' on every connection, and return
        their entries."""
        got: list = []
        for lk in self.wire.busy():
            while lk.reading():
                tag, res = self._recv(lk)
                if tag == "read":
                    got += read_entries(res)
        return got

    def _settle(self) -> None:
        """Wait for every outstanding reply; entries of an outstanding read are stored."""
        while self.wire.tags:
            if self.wire.reading():
                got = self._recv_read()
                if got:
                    self._process(got)
            else:
                for lk in self.wire.busy():
                    while lk.tags:
                        self._recv(lk)

    def _recv(self, lk: Link) -> tuple[str, object]:
        """The next pipelined reply on ``lk``. Only the dead-letter mirror XADD can meet
        maxmemory here (XREADGROUP and XACK are allowed when Redis is full): its row is
        already in the dead_letters table, so the refusal is counted and the loop goes on."""
        try:
            return lk.recv()
        except redis.exceptions.OutOfMemoryError:
            self.stats.redis_oom += 1
            return "xadd", None

    def _batch(self) -> int:
        """Store one batch: the entries of the read sent last time (or of a read that waits
        up to batch_ms), with the next read already sent so Redis prepares it meanwhile."""
        if not self.wire.reading():
            # The linger after a small batch, in slices a stop request ends (it comes from a
            # signal handler, which must not take a lock this thread may hold: no Event).
            while not self._stop and (pause := self._next_read - time.monotonic()) > 0:
                time.sleep(min(pause, LINGER_SLICE_S))
            # Nothing came last time: wait longer (Redis answers as soon as an entry
            # arrives, so this only spaces out the idle wake-ups), not while stopping.
            idle = self._idle_reads >= 2 and not self._stop
            self._read_at = time.monotonic()
            self._send_read(defaults.IDLE_BLOCK_MS if idle else self.s.batch_ms)
        got = self._recv_read()
        if not got:
            self._idle_reads += 1
            return 0
        self._idle_reads = 0
        if (self.s.ingest_linger_ms and not self._stop
                and sum(len(entries) for _, entries in got) < defaults.INGEST_LINGER_ROWS):
            # A small batch: what the other producers send within the linger comes in the
            # next read, with the next commit (a quiet host's ingest wakes once a second).
            self._next_read = self._read_at + self.s.ingest_linger_ms / 1000
        else:
            self._read_at = time.monotonic()
            self._send_read(None)
        return self._process(got)

    def _heartbeat(self) -> None:
        """For `kernelsight health ingest` (compose healthchecks). Skipped (counted) while
        Redis is at maxmemory: the ingester must go on freeing memory."""
        try:
            self.r.set(HEALTH_KEY.format(source="ingest"), orjson.dumps(
                {"instance": self.instance, "timestamp": now_ns()}), ex=defaults.HEALTH_TTL_S)
        except redis.exceptions.OutOfMemoryError:
            self.stats.redis_oom += 1

    def _pending_total(self) -> int:
        pipe = self.r.pipeline(transaction=False)
        for s in self.streams:
            pipe.xpending(s, self.group)
        return sum(p["pending"] for p in pipe.execute())



def install_signal_handlers(ing: Ingester, sigint: bool = True) -> None:
    """SIGTERM/SIGINT: drain the streams, then exit. A second signal stops at once."""

    def handler(signum: int, _frame: object) -> None:
        if ing._stop:
            ing.request_stop(drain=False)
            return
        log.info("signal %d: draining streams, then exiting (signal again to stop now)", signum)
        ing.request_stop(drain=True)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler if sigint else signal.SIG_IGN)

