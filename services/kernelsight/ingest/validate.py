"""Entry validation: one decoded stream entry -> a row tuple, or a BadEntry with its reason.

Pure: imports the schema and the stream field name, no Redis client and no database. The
per-event-type checkers are generated code (see make_validator) because they run once per
event on the ingest hot path.
"""

from __future__ import annotations

import re

import orjson

from kernelsight import schema, streamid
from kernelsight.clock import now_ns
from kernelsight.streams import FIELD, payload_of_fields

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


def make_validator(et: schema.EventType):
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


VALIDATORS = {et.name: (et, make_validator(et)) for et in schema.EVENT_TYPES}  # by table


def stream_table(stream: bytes | str) -> str:
    """The table part of a host's event stream name (``...:events:<table>``), else the name."""
    parts = schema.split_key(stream)
    name = parts[1] if parts else (stream.decode(errors="replace") if isinstance(stream, bytes)
                                   else stream)
    return name.removeprefix(schema.EVENTS_PART)


def payload_of(fields: dict | list | None) -> bytes | None:
    """The ``d`` field of an entry; the common raw shape [b"d", payload] without a dict."""
    if type(fields) is list and len(fields) == 2 and fields[0] == FIELD:
        return fields[1]
    return payload_of_fields(fields)


def bad_stream_id(eid: bytes) -> str:
    """Why an entry id cannot be the row's stream_id (see kernelsight.streamid)."""
    try:
        streamid.pack(eid)
    except ValueError as e:
        return f"{e}; producers must use ids below {streamid.MS_MAX}-{streamid.SEQ_MAX}"
    return eid.decode(errors="replace")


def validate_entry(validate, fields: dict | list, sid: int) -> tuple:
    """Decode and check one stream entry (the slow path: any shape but [b"d", payload]);
    raises BadEntry with the reason."""
    return validate(decode_payload(fields), sid)


def decode_payload(fields: dict | list) -> object:
    """The entry's JSON payload, decoded; BadEntry when missing, too large or not JSON."""
    raw = payload_of(fields)
    if raw is None:
        raise BadEntry("missing_field", "d (the JSON payload)")
    if len(raw) > MAX_ENTRY_BYTES:
        raise BadEntry("too_large", f"{len(raw)} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadEntry("decode_error", str(e)[:200]) from None


ACC_KEYS = frozenset(("timestamp", "host", "instance", "source", "counters"))
ACC_KEYS_MARK = ACC_KEYS | {"mark"}  # "mark": the producer's stream position (runs helper)
ACC_MAX_COUNTERS = 4096
INSTANCE_MAXLEN = 200
NAME_MAXLEN = 64  # source, event_type, metric
REASON_MAXLEN = 200
DETAIL_MAXLEN = 500  # the Publisher cuts details there
_NAME = re.compile(r"[A-Za-z0-9_.:-]*")  # names our code chooses: identifiers
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _name(v: object, what: str, empty_ok: bool = True) -> str:
    if type(v) is not str:
        raise BadEntry("wrong_type", f"accounting {what} must be a string")
    if len(v) > NAME_MAXLEN or not _NAME.fullmatch(v) or (not v and not empty_ok):
        raise BadEntry("out_of_range", f"accounting {what} must be an identifier of at most "
                       f"{NAME_MAXLEN} characters [A-Za-z0-9_.:-]")
    return v


def _text(v: object, what: str, maxlen: int, controls_ok: bool = False) -> str:
    if type(v) is not str:
        raise BadEntry("wrong_type", f"accounting {what} must be a string")
    if len(v) > maxlen:
        raise BadEntry("out_of_range", f"accounting {what} longer than {maxlen}")
    if not controls_ok and _CONTROL.search(v):
        raise BadEntry("out_of_range", f"accounting {what} has control characters")
    return v


def accounting_rows(fields: dict | list) -> list[dict]:
    """One accounting entry (a producer's cumulative counters) -> pipeline_accounting rows,
    with the same type and range checks as events: an exact key set, an integer epoch-ns
    timestamp in range, strings of bounded length (names are identifiers, reasons have no
    control characters), counters as [event_type, metric, reason, value, detail] with a
    non-negative int64 value. Anything else raises BadEntry (the entry is dead-lettered)."""
    o = decode_payload(fields)
    if type(o) is not dict:
        raise BadEntry("not_an_object", "accounting")
    keys = ACC_KEYS_MARK if "mark" in o else ACC_KEYS
    if o.keys() != keys:
        _keys_error(o, keys)
    ts, counters = o["timestamp"], o["counters"]
    if type(ts) is not int:
        raise BadEntry("wrong_type", "timestamp must be an integer")
    if ts < TS_MIN or ts > TS_MAX:
        raise BadEntry("out_of_range", f"timestamp={ts} (want epoch nanoseconds)")
    host = _text(o["host"], "host", HOST_MAXLEN)
    if not host:
        raise BadEntry("wrong_type", "host must be a non-empty string")
    instance = _text(o["instance"], "instance", INSTANCE_MAXLEN)
    if not instance:
        raise BadEntry("wrong_type", "accounting instance must be a non-empty string")
    # The producer's stream position when it took the snapshot (windowed reports).
    mark = o.get("mark")
    if mark is not None and (type(mark) is not int or not 0 <= mark <= schema.INT64_MAX):
        raise BadEntry("out_of_range", f"accounting mark {mark!r}")
    base = {"timestamp": ts, "host": host, "instance": instance,
            "source": _name(o["source"], "source", empty_ok=False), "stream_id": mark}
    if type(counters) is not list:
        raise BadEntry("wrong_type", "accounting counters must be a list")
    if len(counters) > ACC_MAX_COUNTERS:
        raise BadEntry("out_of_range", f"more than {ACC_MAX_COUNTERS} accounting counters")
    rows = []
    for c in counters:
        if type(c) is not list or len(c) != 5:
            raise BadEntry("wrong_type", "an accounting counter must be [event_type, metric, "
                           "reason, value, detail]")
        et, metric, reason, value, detail = c
        if type(value) is not int:
            raise BadEntry("wrong_type", "accounting value must be an integer")
        if not 0 <= value <= schema.INT64_MAX:
            raise BadEntry("out_of_range", f"accounting value {value}")
        rows.append({**base, "event_type": _name(et, "event_type"),
                     "metric": _name(metric, "metric", empty_ok=False),
                     "reason": _text(reason, "reason", REASON_MAXLEN), "value": value,
                     "detail": _text(detail, "detail", DETAIL_MAXLEN, controls_ok=True) or None})
    return rows


def dead_letter_row(stream: bytes, eid: bytes, fields: object, e: Exception) -> dict:
    """The dead_letters row for an entry that cannot be stored; reason is "<kind>: <detail>"."""
    if not isinstance(e, BadEntry):  # JSON or entry-id decoding
        e = BadEntry("decode_error", str(e)[:200])
    raw = payload_of(fields)  # type: ignore[arg-type]
    return {"timestamp": now_ns(), "stream": stream.decode(errors="replace"),
            "entry_id": eid.decode(), "event_type": stream_table(stream),
            "reason": str(e)[:300] or e.reason,
            "payload": (raw or b"")[:schema.DEADLETTER_PAYLOAD_MAX]}


