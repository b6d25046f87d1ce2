"""The ingestion worker: Redis streams -> SQLite, exactly once.

Reads every event stream through one consumer group, batches (``batch_size`` entries or
``batch_ms``, whichever first), validates each entry against the schema, inserts the batch in
one SQLAlchemy Core transaction, and XACKs only after the commit. Every table has a unique
``stream_id``; inserts are ``INSERT OR IGNORE``, so an entry delivered twice (crash between
commit and XACK, or a reclaimed pending entry) is stored once. A malformed entry never stops the
batch: it goes to the ``dead_letters`` table and the dead-letter stream with its reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import signal
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait as wait_any

import orjson
import redis
from sqlalchemy import insert
from sqlalchemy.exc import OperationalError

from kernelsight import defaults, schema
from kernelsight.clock import now_ns
from kernelsight.config import Settings, redact
from kernelsight.db import Checkpointer, open_db
from kernelsight.exceptions import DatabaseError, KernelSightError, RedisUnavailable
from kernelsight.streams import FIELD, HEALTH_KEY, connect, payload_of_fields

log = logging.getLogger(__name__)

MAX_ENTRY_BYTES = 64 * 1024
# 2000-01-01 .. 2100-01-01 in epoch ns: anything outside is a unit or clock bug upstream.
TS_MIN = 946_684_800 * 10**9
TS_MAX = 4_102_444_800 * 10**9
HOST_MAXLEN = 255


class BadEntry(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _make_validator(et: schema.EventType):
    """Compile a checker for ``et`` that turns a decoded JSON object into the row tuple
    (stream_id, timestamp, host, *columns), or raises BadEntry with the reason.

    Generated code, because this runs once per event on the ingest hot path: straight-line
    type and range checks cost a fraction of a loop over column descriptors. The field set is
    checked by count plus the lookups themselves (a KeyError means one is missing), which is
    cheaper than comparing key sets."""
    keys = frozenset(("timestamp", "host", *et.column_names))
    ns: dict = {"BadEntry": BadEntry, "KEYS": keys, "TS_MIN": TS_MIN, "TS_MAX": TS_MAX,
                "HOST_MAXLEN": HOST_MAXLEN, "_keys_error": _keys_error}
    get = ", ".join(f"o[{k!r}]" for k in ("timestamp", "host", *et.column_names))
    lines = [
        "def validate(o, sid):",
        "    if type(o) is not dict: raise BadEntry('not_an_object', type(o).__name__)",
        f"    if len(o) != {len(keys)}: _keys_error(o, KEYS)",
        "    try:",
        f"        ts, h, {', '.join(f'v{i}' for i in range(len(et.columns)))}, = {get}",
        "    except KeyError:",
        "        _keys_error(o, KEYS)",
        "    if type(ts) is not int: raise BadEntry('wrong_type', 'timestamp must be an integer')",
        "    if ts < TS_MIN or ts > TS_MAX:",
        "        raise BadEntry('out_of_range', f'timestamp={ts} (want epoch nanoseconds)')",
        "    if type(h) is not str or not h or len(h) > HOST_MAXLEN:",
        "        raise BadEntry('wrong_type', 'host must be a non-empty string')",
    ]
    out = ["sid", "ts", "h"]
    for i, c in enumerate(et.columns):
        v = f"v{i}"
        if c.kind == "int":
            lines += [
                f"    if type({v}) is not int: raise BadEntry('wrong_type', "
                f"'{c.name} must be an integer')",
                f"    if {v} < {int(c.lo if c.lo is not None else schema.INT64_MIN)} or "
                f"{v} > {int(c.hi if c.hi is not None else schema.INT64_MAX)}:",
                f"        raise BadEntry('out_of_range', f'{c.name}={{{v}}}')",
            ]
        elif c.kind == "float":
            lo = float(c.lo) if c.lo is not None else -1e300
            lines += [
                f"    t = type({v})",
                "    if t is not float and t is not int:",
                f"        raise BadEntry('wrong_type', '{c.name} must be a number')",
                f"    if not ({lo!r} <= {v} <= 1e300):  # also rejects NaN and infinities",
                f"        raise BadEntry('out_of_range', f'{c.name}={{{v}}}')",
            ]
        else:
            lines += [
                f"    if type({v}) is not str: raise BadEntry('wrong_type', "
                f"'{c.name} must be a string')",
                f"    if len({v}) > {c.maxlen}: raise BadEntry('out_of_range', "
                f"'{c.name} longer than {c.maxlen}')",
            ]
            if c.choices:
                ns[f"C{i}"] = frozenset(c.choices)
                lines.append(f"    if {v} not in C{i}: raise BadEntry('out_of_range', "
                             f"f'{c.name}={{{v}[:20]!r}}')")
        out.append(v)
    lines.append(f"    return ({', '.join(out)},)")
    exec("\n".join(lines), ns)
    return ns["validate"]


def _keys_error(o: dict, keys: frozenset) -> None:
    missing = keys - o.keys()
    if missing:
        raise BadEntry("missing_field", ",".join(sorted(missing)))
    raise BadEntry("unknown_field", ",".join(sorted(map(str, o.keys() - keys)))[:200])


VALIDATORS = {et.stream.encode(): (et, _make_validator(et)) for et in schema.EVENT_TYPES}
ALL_STREAMS: list[bytes] = [et.stream.encode() for et in schema.EVENT_TYPES] + [
    schema.ACCOUNTING_STREAM.encode()]


def payload_of(fields: dict | list | None) -> bytes | None:
    """The ``d`` field of an entry; the common raw shape [b"d", payload] without a dict."""
    if type(fields) is list and len(fields) == 2 and fields[0] == FIELD:
        return fields[1]
    return payload_of_fields(fields)


def validate_entry(validate, fields: dict | list, sid: int) -> tuple:
    """Decode and check one stream entry (the slow path: any shape but [b"d", payload]);
    raises BadEntry with the reason."""
    raw = payload_of(fields)
    if raw is None:
        raise BadEntry("missing_field", "d (the JSON payload)")
    if len(raw) > MAX_ENTRY_BYTES:
        raise BadEntry("too_large", f"{len(raw)} bytes")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadEntry("decode_error", str(e)[:200]) from None
    return validate(obj, sid)


def _accounting_rows(fields: dict | list) -> list[dict]:
    raw = payload_of(fields)
    o = orjson.loads(raw) if raw else None
    if not isinstance(o, dict):
        raise BadEntry("not_an_object", "accounting")
    try:
        base = {"timestamp": int(o["timestamp"]), "host": str(o["host"])[:HOST_MAXLEN],
                "instance": str(o["instance"])[:200], "source": str(o["source"])[:64]}
        rows = []
        for et, metric, reason, value, detail in o["counters"]:
            if type(value) is not int or not 0 <= value <= schema.INT64_MAX:
                raise BadEntry("out_of_range", f"accounting value {value!r}")
            rows.append({**base, "event_type": str(et)[:64], "metric": str(metric)[:64],
                         "reason": str(reason)[:200], "value": value,
                         "detail": (str(detail)[:500] or None)})
        return rows
    except (KeyError, TypeError, ValueError) as e:
        raise BadEntry("wrong_type", f"accounting entry: {e}") from None


class WriteLock:
    """Serialises ingest workers' transactions on one database with flock(2).

    SQLite's own busy handler polls (sleeping 1, 2, 5, 10... ms), so a worker waiting for the
    write lock would sleep well past the other's commit; a blocked flock wakes at once. Several
    ingesters (`--workers`, or separate processes) each hold it only around their transaction,
    so one validates and reads while the other writes. Where the lock file cannot be made
    (read-only directory), SQLite's locking alone still keeps the data correct."""

    def __init__(self, db_path: str) -> None:
        self.fd: int | None = None
        with contextlib.suppress(OSError):
            self.fd = os.open(f"{db_path}-ingest.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                              0o644)

    def __enter__(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


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
        """XACK of a whole batch, RESP-encoded here: redis-py's generic packing of a thousand
        ids costs more than the rest of the acknowledgement."""
        head = b"*%d\r\n$4\r\nXACK\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(ids) + 3, len(stream), stream, len(group), group)
        self._conn().send_packed_command(
            [head + b"".join([b"$%d\r\n%b\r\n" % (len(i), i) for i in ids])],
            check_health=False)
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


def _dead_letter(stream: bytes, eid: bytes, fields: object, e: Exception) -> dict:
    """The dead_letters row for an entry that cannot be stored; reason is "<kind>: <detail>"."""
    if not isinstance(e, BadEntry):  # JSON or entry-id decoding
        e = BadEntry("decode_error", str(e)[:200])
    raw = payload_of(fields)  # type: ignore[arg-type]
    return {"timestamp": now_ns(), "stream": stream.decode(errors="replace"),
            "entry_id": eid.decode(), "event_type": stream.decode(
                errors="replace").removeprefix(schema.STREAM_PREFIX),
            "reason": str(e)[:300] or e.reason,
            "payload": (raw or b"")[:schema.DEADLETTER_PAYLOAD_MAX]}


@dataclass
class IngestStats:
    stored: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    dead: Counter = field(default_factory=Counter)
    batches: int = 0
    lock_retries: int = 0
    db_errors: int = 0
    reclaimed: int = 0
    redis_errors: int = 0


class Ingester:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        # Checkpoints run in their own thread (see Checkpointer), not in this engine's commits.
        self.engine = open_db(settings.db_path, checkpoint_thread=True)
        self.checkpointer: Checkpointer | None = None
        self.write_lock = WriteLock(settings.db_path)
        self.r = connect(settings.redis_url)
        self.group = schema.INGEST_GROUP
        self.consumer = settings.consumer
        self.instance = f"ingest@{settings.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = IngestStats()
        self._stop = False
        self._draining = False
        self._last_trim = 0.0
        self._last_reclaim = 0.0
        self._last_accounting = 0.0
        # Rows are positional tuples (stream_id, timestamp, host, *columns) handed straight to
        # the driver's executemany: SQLAlchemy's per-row parameter processing cost more than
        # SQLite's insert itself.
        self._tables = {
            et.name: (f"INSERT OR IGNORE INTO {et.name} (stream_id, timestamp, host, "
                      f"{', '.join(et.column_names)}) VALUES "
                      f"({', '.join('?' * (len(et.columns) + 3))})")
            for et in schema.EVENT_TYPES}
        self._dead_ins = insert(schema.dead_letters).prefix_with("OR IGNORE")
        self._acc_ins = insert(schema.pipeline_accounting)
        self.streams: list[bytes] = list(ALL_STREAMS)
        self.wire = Wire(self.r)
        self._recover_pending = False
        # Keep XREADGROUP's reply raw (nested lists): redis-py's conversion of every entry's
        # fields into a dict is pure overhead here.
        self.r.set_response_callback("XREADGROUP", lambda resp, **_: resp)

    # -- setup ----------------------------------------------------------------------------
    def ensure_groups(self) -> None:
        for s in ALL_STREAMS:
            try:
                # From 0, so events published before the group existed are not skipped.
                self.r.xgroup_create(s, self.group, id="0", mkstream=True)
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
    def _xreadgroup(self, ids: str, block: int | None, count: int) -> list:
        args: list = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        return [*args, "STREAMS", *self.streams, *([ids] * len(self.streams))]

    def _read(self, ids: str, block: int | None, count: int) -> list:
        """A synchronous read (start-up and recovery; the main loop pipelines its reads)."""
        return _entries(self.r.execute_command(*self._xreadgroup(ids, block, count)))

    def discover(self) -> None:
        """Streams under our prefix that no event type owns (a misconfigured or newer
        producer): read them too, so their entries become counted dead letters rather than
        sitting unseen."""
        found = set(self.r.scan_iter(match=schema.STREAM_PREFIX.encode() + b"*", count=1000,
                                     _type="stream"))
        extra = sorted(found - set(ALL_STREAMS))
        for s in extra:
            try:
                self.r.xgroup_create(s, self.group, id="0")
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self.streams = ALL_STREAMS + extra

    def _own_pending(self) -> None:
        """Entries delivered to this consumer name but never acked (a previous crash)."""
        while True:
            got = [(s, [e for e in es if e[1]]) for s, es in self._read("0", None, 1000)]
            got = [(s, es) for s, es in got if es]
            if not got:
                return
            self.stats.reclaimed += sum(len(es) for _, es in got)
            # Process now so the next "0" read moves on (they are acked after commit).
            self._process(got)

    def _autoclaim(self) -> None:
        """Take over entries idle too long on other (dead) consumers of the group."""
        for s in self.streams:
            start = "0-0"
            while True:
                res = self.r.xautoclaim(s, self.group, self.consumer,
                                        min_idle_time=defaults.RECLAIM_IDLE_MS, start_id=start,
                                        count=1000)
                nxt, entries = res[0], res[1]
                entries = [e for e in entries if e and e[1]]
                if entries:
                    self.stats.reclaimed += len(entries)
                    self._process([(s, entries)])
                if nxt in (b"0-0", "0-0"):
                    break
                start = nxt

    # -- the batch ------------------------------------------------------------------------
    def _process(self, got: list) -> int:
        """Validate a batch, store it, then acknowledge it (the XACK is pipelined: its reply
        is read later, nothing waits on it)."""
        n, rows, acc, dead, ack = self._prepare(got)
        if not n:
            return 0
        self._commit(rows, acc, dead)
        for d in dead:
            self.wire.send("xadd", "XADD", schema.DEADLETTER_STREAM, "MAXLEN", "~", 100_000,
                           "*", "stream", d["stream"], "id", d["entry_id"],
                           "reason", d["reason"], "payload", d["payload"][:1024])
        group = self.group.encode()
        for stream, ids in ack.items():
            self.wire.send_xack(stream, group, ids)
        self.stats.batches += 1
        return n

    def _prepare(self, got: list) -> tuple:
        rows: dict[str, list[tuple]] = defaultdict(list)
        acc: list[dict] = []
        dead: list[dict] = []
        ack: dict[bytes, list[bytes]] = defaultdict(list)
        acc_stream = schema.ACCOUNTING_STREAM.encode()
        loads = orjson.loads
        n = 0
        for stream, entries in got:
            n += len(entries)
            ack[stream].extend([e[0] for e in entries])
            vt = VALIDATORS.get(stream)
            if vt is None:
                for eid, fields in entries:
                    if stream == acc_stream:
                        try:
                            acc.extend(_accounting_rows(fields))
                        except (BadEntry, orjson.JSONDecodeError, ValueError) as e:
                            dead.append(_dead_letter(stream, eid, fields, e))
                    else:
                        dead.append(_dead_letter(stream, eid, fields, BadEntry(
                            "unknown_event_type", stream.decode(errors="replace"))))
                continue
            validate = vt[1]
            out = rows[vt[0].name]
            # The hot loop: one entry per event, so nothing here that is not needed.
            for eid, fields in entries:
                try:
                    ms, _, seq = eid.partition(b"-")
                    sid = int(ms) << 19 | int(seq)
                    if type(fields) is list and len(fields) == 2 and fields[0] == FIELD \
                            and len(fields[1]) <= MAX_ENTRY_BYTES:
                        out.append(validate(loads(fields[1]), sid))
                    else:
                        out.append(validate_entry(validate, fields, sid))
                except (BadEntry, orjson.JSONDecodeError, ValueError) as e:
                    dead.append(_dead_letter(stream, eid, fields, e))
        return n, {k: v for k, v in rows.items() if v}, acc, dead, ack

    def _commit(self, rows: dict[str, list[tuple]], acc: list[dict], dead: list[dict]) -> None:
        """One transaction; on 'database is locked' or a full disk, wait and retry (the entries
        stay pending in Redis meanwhile, so nothing is lost)."""
        attempt = 0
        while True:
            try:
                stored: dict[str, int] = {}
                with self.write_lock, self.engine.begin() as conn:
                    for name, rs in rows.items():
                        res = conn.exec_driver_sql(self._tables[name], rs)
                        stored[name] = res.rowcount
                    if dead:
                        conn.execute(self._dead_ins, dead)
                    if acc:
                        conn.execute(self._acc_ins, acc)
                    own = self._own_accounting(rows, dead)
                    if own:
                        conn.execute(self._acc_ins, own)
                for name, rs in rows.items():
                    self.stats.stored[name] += stored[name]
                    self.stats.duplicates[name] += len(rs) - stored[name]
                for d in dead:
                    self.stats.dead[d["reason"].split(":")[0]] += 1
                return
            except OperationalError as e:
                msg = str(e.orig)
                attempt += 1
                if "locked" in msg or "busy" in msg:
                    self.stats.lock_retries += 1
                    if attempt > defaults.LOCK_RETRIES:
                        raise DatabaseError(
                            f"database {self.s.db_path} stayed locked for "
                            f"{attempt * defaults.LOCK_RETRY_S:.0f}s; close the program holding "
                            "a write "
                            "transaction (entries stay pending in Redis)") from None
                    log.warning("database is locked, retry %d", attempt)
                    time.sleep(defaults.LOCK_RETRY_S)
                    continue
                self.stats.db_errors += 1
                if "full" in msg or "disk I/O" in msg:
                    if attempt == 1 or attempt % 30 == 0:
                        log.error("cannot write %s: %s; free space — entries stay pending in "
                                  "Redis and are stored when it can write again",
                                  self.s.db_path, msg)
                    if self._stop and not self._draining:
                        raise DatabaseError(f"cannot write {self.s.db_path}: {msg}") from None
                    time.sleep(min(0.2 * attempt, 2.0))
                    continue
                raise DatabaseError(f"cannot write {self.s.db_path}: {msg}") from None

    def _own_accounting(self, rows: dict, dead: list) -> list[dict]:
        """The ingester's counters, as cumulative accounting rows (about once a second)."""
        now = time.monotonic()
        if now - self._last_accounting < 1.0 and not self._draining:
            return []
        self._last_accounting = now
        base = {"timestamp": now_ns(), "host": self.s.host, "instance": self.instance,
                "source": "ingest", "detail": None}
        st = self.stats
        out = [{**base, "event_type": "", "metric": m, "reason": "", "value": v}
               for m, v in (("lock_retries", st.lock_retries), ("db_errors", st.db_errors),
                            ("reclaimed", st.reclaimed), ("redis_errors", st.redis_errors))]
        return out

    # -- trimming -------------------------------------------------------------------------
    def trim(self) -> None:
        """Cap streams without losing anything: only entries the group has acknowledged
        (older than every pending entry and not newer than the last delivered) are trimmed,
        and only once a stream holds more than ``stream_retain`` entries."""
        groups = {}
        pipe = self.r.pipeline(transaction=False)
        for s in ALL_STREAMS:
            pipe.xlen(s)
        lens = pipe.execute()
        for s, n in zip(ALL_STREAMS, lens, strict=True):
            if n <= self.s.stream_retain:
                continue
            for g in self.r.xinfo_groups(s):
                groups[g["name"]] = g
            g = groups.get(self.group.encode()) or groups.get(self.group)
            if not g:
                continue
            bound = g["last-delivered-id"]
            bound = bound.decode() if isinstance(bound, bytes) else bound
            pend = self.r.xpending(s, self.group)
            if pend and pend.get("pending"):
                bound = min(bound, pend["min"].decode() if isinstance(pend["min"], bytes)
                            else pend["min"], key=lambda x: tuple(map(int, x.split("-"))))
                self.r.xtrim(s, minid=bound, approximate=True)
            else:
                ms, seq = map(int, bound.split("-"))
                self.r.xtrim(s, minid=f"{ms}-{seq + 1}", approximate=True)

    # -- main loop ------------------------------------------------------------------------
    def request_stop(self, drain: bool = True) -> None:
        self._stop = True
        self._draining = drain

    def run(self, idle_exit_s: float | None = None) -> IngestStats:
        """Loop until stopped. On a drain stop, keep going until every stream is empty and
        nothing is pending, then return."""
        self.check_redis()
        self.ensure_groups()
        self.discover()
        self._own_pending()
        self._autoclaim()
        self._last_reclaim = time.monotonic()
        self.checkpointer = Checkpointer(self.s.db_path).start()
        try:
            self._loop(idle_exit_s)
            self._settle()
        except redis.RedisError as e:  # stopping anyway: what was in flight stays pending
            log.warning("redis unavailable at stop (%s); undelivered entries stay pending", e)
        finally:
            self.wire.reset()
            # Final accounting snapshot, then the last checkpoint.
            try:
                self._last_accounting = 0.0
                self._draining = True
                self._commit({}, [], [])
            finally:
                self.checkpointer.stop()
        return self.stats

    def _loop(self, idle_exit_s: float | None) -> None:
        idle_since = time.monotonic()
        backoff = 0.0
        while True:
            try:
                if self._recover_pending:
                    self._settle()
                    self._own_pending()
                    self._recover_pending = False
                n = self._batch()
                backoff = 0.0
            except redis.ResponseError as e:
                self.wire.reset()
                self._recover_pending = True
                if "NOGROUP" in str(e):
                    log.warning("consumer group missing (Redis restarted?); recreating it")
                    self.ensure_groups()
                    continue
                raise
            except redis.RedisError as e:
                self.wire.reset()
                self._recover_pending = True
                self.stats.redis_errors += 1
                backoff = min(max(backoff * 2, 0.2), 5.0)
                log.warning("redis unavailable (%s); retrying in %.1fs", e, backoff)
                time.sleep(backoff)
                if self._stop and not self._draining:
                    break
                try:
                    self.ensure_groups()
                except redis.RedisError:
                    pass
                continue
            now = time.monotonic()
            if self._stop and not self._draining:
                break
            if n:
                idle_since = now
            elif self._stop:
                self._settle()
                if self._pending_total() == 0:
                    break
            elif idle_exit_s is not None and now - idle_since >= idle_exit_s:
                break
            if now - self._last_trim > 1.0:
                self._last_trim = now
                self.trim()
                self._heartbeat()
            if now - self._last_reclaim > 10.0:
                self._last_reclaim = now
                self._autoclaim()
                self.discover()

    def _send_read(self, block: int | None) -> None:
        self.wire.send("read", *self._xreadgroup(">", block, self.s.batch_size))

    def _recv_read(self) -> list:
        """Read replies up to the outstanding XREADGROUP's, and return its entries."""
        while True:
            tag, res = self.wire.recv()
            if tag == "read":
                return _entries(res)

    def _settle(self) -> None:
        """Wait for every outstanding reply; entries of an outstanding read are stored."""
        while self.wire.tags:
            if self.wire.reading():
                got = self._recv_read()
                if got:
                    self._process(got)
            else:
                self.wire.recv()

    def _batch(self) -> int:
        """Store one batch: the entries of the read sent last time (or of a read that waits
        up to batch_ms), with the next read already sent so Redis prepares it meanwhile."""
        if not self.wire.reading():
            self._send_read(self.s.batch_ms)
        got = self._recv_read()
        if not got:
            return 0
        self._send_read(None)
        return self._process(got)

    def _heartbeat(self) -> None:
        """For `kernelsight health ingest` (compose healthchecks)."""
        self.r.set(HEALTH_KEY.format(source="ingest"), orjson.dumps(
            {"instance": self.instance, "timestamp": now_ns()}), ex=defaults.HEALTH_TTL_S)

    def _pending_total(self) -> int:
        pipe = self.r.pipeline(transaction=False)
        for s in self.streams:
            pipe.xpending(s, self.group)
        return sum(p["pending"] for p in pipe.execute())


def _entries(res: object) -> list:
    """XREADGROUP's reply as [(stream, entries)]: a RESP3 map or a RESP2 array, or nothing."""
    if not res:
        return []
    return list(res.items()) if isinstance(res, dict) else res  # type: ignore[union-attr]


def backlog(r: redis.Redis, group: str = schema.INGEST_GROUP) -> int:
    """Entries not yet stored: undelivered (group lag) plus delivered-but-unacked (pending)."""
    total = 0
    streams = set(ALL_STREAMS) | set(
        r.scan_iter(match=schema.STREAM_PREFIX.encode() + b"*", count=1000, _type="stream"))
    for s in sorted(streams):
        try:
            groups = r.xinfo_groups(s)
        except redis.ResponseError:
            continue  # no such stream yet
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == group:
                lag = g.get("lag")
                if lag is None:  # Redis cannot tell after some trims/deletes: count by id
                    last = g["last-delivered-id"]
                    lag = len(r.xrange(s, min=b"(" + last if isinstance(last, bytes)
                                       else "(" + last, count=100_000))
                total += int(lag) + int(g["pending"])
    return total


def wait_drained(redis_url: str, timeout: float = 60.0) -> bool:
    """Wait until the ingest group has stored everything in every stream."""
    from kernelsight.streams import connect as _connect

    r = _connect(redis_url)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if backlog(r) == 0:
            return True
        time.sleep(0.2)
    return False


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


def worker_count(n: int) -> int:
    """0 means one worker per CPU, at most two: SQLite takes one writer at a time, and two
    workers already keep it busy (one writes while the other reads and validates)."""
    return n if n > 0 else max(1, min(2, os.cpu_count() or 1))


def run_ingest(s: Settings, workers: int = 0, drain: bool = False,
               idle_exit_s: float | None = None) -> IngestStats:
    """The ingester as one process (workers=1) or as N worker processes sharing the group.

    Workers are named ``<consumer>``, ``<consumer>-w2``...; the same names on a restart pick
    up each one's pending entries. SIGTERM/SIGINT to this process reach every worker (drain,
    then exit; a second signal stops at once). A worker that fails with an expected error
    stops the others and its error is raised here; one killed by a signal is restarted."""
    workers = worker_count(workers)
    if workers == 1:
        ing = Ingester(s)
        install_signal_handlers(ing)
        if drain:
            ing.request_stop(drain=True)
        return ing.run(idle_exit_s)
    open_db(s.db_path).dispose()  # schema once, and a bad path fails here, not in N workers
    return _Supervisor(s, workers, drain, idle_exit_s).run()


def _die_with_parent() -> None:
    """Workers must not outlive a supervisor that was SIGKILLed."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_EARLY_SIGNALS: list[int] = []  # SIGTERMs a worker got before its Ingester existed


def _worker_main(s: Settings, conn, drain: bool, idle_exit_s: float | None) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the supervisor forwards it as SIGTERM, so a
    # worker taking both would count two signals and stop without draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, _f: _EARLY_SIGNALS.append(signum))
    try:
        ing = Ingester(s)
        install_signal_handlers(ing, sigint=False)
        if drain or _EARLY_SIGNALS:
            ing.request_stop(drain=True)
        if len(_EARLY_SIGNALS) > 1:
            ing.request_stop(drain=False)
        conn.send(("ok", ing.run(idle_exit_s)))
    except KernelSightError as e:
        conn.send(("error", e))
        os._exit(e.exit_code)


class _Supervisor:
    RESTARTS_MAX = 10

    def __init__(self, s: Settings, n: int, drain: bool, idle_exit_s: float | None) -> None:
        self.s = s
        self.n = n
        self.drain = drain
        self.idle_exit_s = idle_exit_s
        self.ctx = multiprocessing.get_context("fork")
        self.procs: dict[int, tuple] = {}
        self.signals = 0
        self.restarts = 0
        self.pid = os.getpid()

    def _name(self, i: int) -> str:
        return self.s.consumer if i == 0 else f"{self.s.consumer}-w{i + 1}"

    def _start(self, i: int) -> None:
        rx, tx = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_worker_main, name=f"ingest-{self._name(i)}",
                             args=(replace(self.s, consumer=self._name(i)), tx, self.drain,
                                   self.idle_exit_s))
        p.start()
        tx.close()
        self.procs[i] = (p, rx)

    def _forward(self, signum: int, _frame: object) -> None:
        if os.getpid() != self.pid:  # a new worker, before it set its own handlers
            _EARLY_SIGNALS.append(signum)
            return
        self.signals += 1
        for p, _ in self.procs.values():
            if p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def run(self) -> IngestStats:
        total = IngestStats()
        error: BaseException | None = None
        old = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for i in range(self.n):
                self._start(i)
            while self.procs:
                by_sentinel = {p.sentinel: i for i, (p, _) in self.procs.items()}
                for sentinel in wait_any(list(by_sentinel)):
                    i = by_sentinel[sentinel]
                    p, rx = self.procs.pop(i)
                    p.join()
                    msg = _result(rx)
                    if msg and msg[0] == "ok":
                        _add(total, msg[1])
                    elif msg and msg[0] == "error":
                        error = error or msg[1]
                        self._forward(signal.SIGTERM, None)
                    elif (p.exitcode or 0) < 0 and not self.signals and error is None \
                            and self.restarts < self.RESTARTS_MAX:
                        self.restarts += 1
                        log.error("ingest worker %s killed by signal %d; restarting it (its "
                                  "pending entries are re-read)", self._name(i), -p.exitcode)
                        self._start(i)
                    elif error is None:
                        error = DatabaseError(f"ingest worker {self._name(i)} exited with code "
                                              f"{p.exitcode}; see its log above")
                        self._forward(signal.SIGTERM, None)
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            for p, _ in self.procs.values():  # only after a bug here: don't leave orphans
                p.kill()
                p.join()
        if error is not None:
            raise error
        return total


def _result(rx) -> tuple | None:
    """What a finished worker sent: ("ok", stats), ("error", exc), or None if it died first."""
    try:
        return rx.recv() if rx.poll() else None
    except (EOFError, OSError):
        return None
    finally:
        rx.close()


def _add(total: IngestStats, st: IngestStats) -> None:
    for name in ("stored", "duplicates", "dead"):
        getattr(total, name).update(getattr(st, name))
    for name in ("batches", "lock_retries", "db_errors", "reclaimed", "redis_errors"):
        setattr(total, name, getattr(total, name) + getattr(st, name))
