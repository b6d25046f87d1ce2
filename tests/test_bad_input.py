"""Property-based hostile input: malformed, truncated, oversized, wrongly typed entries go to
the dead-letter stream with a reason; valid entries in the same batch are stored; the
ingester never crashes."""

from __future__ import annotations

import random

import orjson
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from kernelsight import schema
from kernelsight.config import Settings
from kernelsight.ingest import Ingester
from kernelsight.loadgen import make_event
from kernelsight.streams import FIELD, register

H = "h"  # the ingester's host below

TYPES = [et.name for et in schema.EVENT_TYPES]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                         st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=40))


@st.composite
def hostile(draw) -> tuple[str, bytes | None]:
    """(event type, payload) where the payload is invalid in one specific way."""
    name = draw(st.sampled_from(TYPES))
    et = schema.BY_NAME[name]
    row = make_event(et, random.Random(draw(st.integers(0, 10**6))), "h", 1_700_000_000 * 10**9)
    kind = draw(st.sampled_from(["invalid_utf8", "truncated", "huge", "wrong_type", "int64",
                                 "negative", "missing", "extra", "not_object", "bad_ts",
                                 "no_field", "int65"]))
    col = draw(st.sampled_from(et.columns))
    if kind == "invalid_utf8":
        raw = orjson.dumps(row)
        return name, raw.replace(b'"h"', b'"\xff\xfe"', 1)
    if kind == "truncated":
        raw = orjson.dumps(row)
        return name, raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "huge":
        return name, orjson.dumps({**row, col.name: "x" * 70_000})
    if kind == "int65":  # beyond what JSON encoders emit: a hand-written number
        return name, orjson.dumps(row)[:-1] + b',"pid":' + str(2**70).encode() + b"}"
    if kind == "wrong_type":
        bad = draw(json_scalars.filter(lambda v: not _valid_for(col, v)))
        row[col.name] = bad
    elif kind == "int64":
        ints = [c for c in et.columns if c.kind == "int"] or [col]
        row[draw(st.sampled_from(ints)).name] = draw(st.sampled_from([2**63, 2**64 - 1]))
    elif kind == "negative":
        nonneg = [c for c in et.columns if c.kind in ("int", "float") and c.lo == 0]
        if not nonneg:
            return name, b"[]"
        c = draw(st.sampled_from(nonneg))
        row[c.name] = -draw(st.integers(1, 10**12))
    elif kind == "missing":
        del row[col.name]
    elif kind == "extra":
        row[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in row))] = 1
    elif kind == "not_object":
        return name, orjson.dumps(draw(st.lists(json_scalars, max_size=3)))
    elif kind == "bad_ts":
        row["timestamp"] = draw(st.sampled_from([0, 1_700_000_000, 1_700_000_000_000,
                                                 -5, "2026-11-26", 1.5e18]))
    elif kind == "no_field":
        return name, None
    return name, orjson.dumps(row)


def _valid_for(col: schema.Col, v: object) -> bool:
    if col.kind == "int":
        return type(v) is int and col.lo <= v <= col.hi  # type: ignore[operator]
    if col.kind == "float":
        return type(v) in (int, float) and v == v and abs(v) != float("inf") and v >= 0
    return isinstance(v, str) and len(v) <= col.maxlen and (not col.choices or v in col.choices)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(bad=st.lists(hostile(), min_size=1, max_size=8), n_good=st.integers(0, 20),
       seed=st.integers(0, 1000))
def test_hostile_entries_are_dead_lettered_and_batch_goes_on(redis_server, tmp_path_factory,
                                                             bad, n_good, seed):
    url = redis_server.url
    r = redis.Redis.from_url(url)
    r.flushall()
    db = tmp_path_factory.mktemp("h") / "ks.db"
    rng = random.Random(seed)
    good_by_type: dict[str, int] = {}
    # Interleave valid and hostile entries in the same streams and batch.
    entries = [("bad", b) for b in bad] + [("good", None)] * n_good
    rng.shuffle(entries)
    for kind, item in entries:
        if kind == "good":
            name = rng.choice(TYPES)
            ev = make_event(schema.BY_NAME[name], rng, "h", 1_700_000_000 * 10**9)
            r.xadd(schema.stream_key(H, name), {FIELD: orjson.dumps(ev)})
            good_by_type[name] = good_by_type.get(name, 0) + 1
        else:
            name, payload = item
            r.xadd(schema.stream_key(H, name), {FIELD: payload} if payload is not None
                   else {b"x": b"y"})
    # An event type nobody owns is dead-lettered too, not left unseen.
    r.xadd(schema.stream_key(H, "bogus_events"), {FIELD: b"{}"})
    register(r, H, [schema.stream_key(H, "bogus_events")])  # as its producer would
    ing = Ingester(Settings(redis_url=url, db_path=str(db), host="h", batch_size=7))
    ing.request_stop(drain=True)
    ing.run()
    with ing.engine.connect() as c:
        for name in TYPES:
            n = c.execute(text(f"SELECT COUNT(*) FROM {name}")).scalar_one()
            assert n == good_by_type.get(name, 0), name
        dead = c.execute(text("SELECT reason FROM dead_letters")).scalars().all()
    assert len(dead) == len(bad) + 1
    assert all(d.split(":")[0] in {
        "decode_error", "too_large", "wrong_type", "out_of_range", "missing_field",
        "unknown_field", "not_an_object", "unknown_event_type"} for d in dead), dead
    assert r.xlen(schema.deadletter_stream(H)) == len(bad) + 1
    ing.engine.dispose()
    r.close()
