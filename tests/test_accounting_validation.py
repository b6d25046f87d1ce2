"""Accounting entries get the same type and range checks as events: crafted entries go
through a real Redis and `kernelsight ingest --drain`; each bad one becomes a dead letter with
its reason, and only the well-formed entry reaches pipeline_accounting."""

from __future__ import annotations

import subprocess
import sys

import orjson
from sqlalchemy import text

from kernelsight import schema
from kernelsight.db import open_readonly

H = "testhost"  # the settings fixture's host

TS = 1_800_000_000 * 10**9
GOOD = {"timestamp": TS, "host": "h1", "instance": "scraper-1", "source": "scraper",
        "counters": [["memory_metrics", "produced", "", 7, ""],
                     ["syscall_events", "dropped", "ringbuf_full", 2, ""],
                     ["", "failed", "", 1, "bcc: cannot compile\nline 2"]]}


def bad(**kw: object) -> dict:
    return {**GOOD, **kw}


def counter(*c: object) -> dict:
    return bad(counters=[list(c)])


CASES = {
    "timestamp as a string": (bad(timestamp=str(TS)), "wrong_type"),
    "timestamp in seconds": (bad(timestamp=1_800_000_000), "out_of_range"),
    "timestamp past 2100": (bad(timestamp=5_000_000_000 * 10**9), "out_of_range"),
    "timestamp as a float": (bad(timestamp=float(TS)), "wrong_type"),
    "timestamp as a bool": (bad(timestamp=True), "wrong_type"),
    "empty host": (bad(host=""), "wrong_type"),
    "host too long": (bad(host="h" * 300), "out_of_range"),
    "host not a string": (bad(host=123), "wrong_type"),
    "host with ESC": (bad(host="h\x1b[2J"), "out_of_range"),
    "instance an object": (bad(instance={}), "wrong_type"),
    "source too long": (bad(source="s" * 100), "out_of_range"),
    "source with markup": (bad(source="[/x]"), "out_of_range"),
    "counters a string": (bad(counters="abc"), "wrong_type"),
    "counter of four": (bad(counters=[["", "produced", "", 1]]), "wrong_type"),
    "event_type a number": (counter(123, "produced", "", 1, ""), "wrong_type"),
    "metric with ESC": (counter("", "\x1b[2J", "", 1, ""), "out_of_range"),
    "metric too long": (counter("", "m" * 65, "", 1, ""), "out_of_range"),
    "reason too long": (counter("x", "dropped", "r" * 201, 1, ""), "out_of_range"),
    "reason with C1": (counter("x", "dropped", "\x9b2J", 1, ""), "out_of_range"),
    "negative value": (counter("x", "produced", "", -1, ""), "out_of_range"),
    "value beyond int64": (counter("x", "produced", "", 2**63, ""), "out_of_range"),
    "value a float": (counter("x", "produced", "", 1.0, ""), "wrong_type"),
    "value a string": (counter("x", "produced", "", "1", ""), "wrong_type"),
    "detail too long": (counter("", "failed", "", 1, "d" * 10_000), "out_of_range"),
    "detail a number": (counter("", "failed", "", 1, 5), "wrong_type"),
    "extra key": (bad(evil=1), "unknown_field"),
    "missing counters": ({k: v for k, v in GOOD.items() if k != "counters"}, "missing_field"),
    "not an object": ([1, 2], "not_an_object"),
}
RAW = {
    "invalid JSON": (b'{"timestamp": \xff}', "decode_error"),
    "too large": (orjson.dumps(bad(counters=[["x", "produced", "r" * 100, 1, ""]] * 800)),
                  "too_large"),
}


def test_crafted_accounting_entries_are_dead_lettered(settings, rclient):
    ids = {}
    for name, (obj, _) in CASES.items():
        ids[rclient.xadd(schema.accounting_stream(H), {b"d": orjson.dumps(obj)}).decode()] = name
    for name, (raw, _) in RAW.items():
        ids[rclient.xadd(schema.accounting_stream(H), {b"d": raw}).decode()] = name
    rclient.xadd(schema.accounting_stream(H), {b"d": orjson.dumps(GOOD)})
    res = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--drain",
                          "--redis-url", settings.redis_url, "--db", settings.db_path],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    eng = open_readonly(settings.db_path)
    with eng.connect() as c:
        dead = {eid: reason for eid, reason in c.execute(text(
            "SELECT entry_id, reason FROM dead_letters WHERE stream = :s"),
            {"s": schema.accounting_stream(H)})}
        stored = sorted(tuple(r) for r in c.execute(text(
            "SELECT host, instance, source, event_type, metric, reason, value, detail "
            "FROM pipeline_accounting WHERE instance = 'scraper-1'")))
    eng.dispose()
    expected = {**{n: k for n, (_, k) in CASES.items()}, **{n: k for n, (_, k) in RAW.items()}}
    wrong = {name: dead.get(eid, "STORED") for eid, name in ids.items()
             if dead.get(eid, "").split(":")[0] != expected[name]}
    assert not wrong, wrong
    assert stored == sorted([
        ("h1", "scraper-1", "scraper", "memory_metrics", "produced", "", 7, None),
        ("h1", "scraper-1", "scraper", "syscall_events", "dropped", "ringbuf_full", 2, None),
        ("h1", "scraper-1", "scraper", "", "failed", "", 1, "bcc: cannot compile\nline 2"),
    ])


def test_longest_accepted_values(settings, rclient):
    """The bounds themselves are accepted (no off-by-one that would drop real counters)."""
    name = "n" * 64
    entry = bad(host="h" * 255, instance="i" * 200, source=name, counters=[
        [name, name, "r" * 200, 2**63 - 1, "d" * 500]])
    rclient.xadd(schema.accounting_stream(H), {b"d": orjson.dumps(entry)})
    res = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--drain",
                          "--redis-url", settings.redis_url, "--db", settings.db_path],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    eng = open_readonly(settings.db_path)
    with eng.connect() as c:
        n = c.execute(text("SELECT COUNT(*) FROM pipeline_accounting WHERE value = :v"),
                      {"v": 2**63 - 1}).scalar()
        d = c.execute(text("SELECT COUNT(*) FROM dead_letters")).scalar()
    eng.dispose()
    assert (n, d) == (1, 0)
