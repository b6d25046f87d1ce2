"""The ingester stores an accounting counter again only when it changed (ingest/accounting.py):
crafted snapshots through a real Redis and `kernelsight ingest --drain`; the report's figures
over the whole database and over a window between snapshots are the same as if every row had
been stored."""

from __future__ import annotations

import subprocess
import sys

import orjson
from sqlalchemy import text

from kernelsight import schema
from kernelsight.db import open_readonly
from kernelsight.report import ACCOUNTING_SQL, WINDOW_ACCOUNTING_SQL

TS = 1_800_000_000 * 10**9
# (mark, produced, dropped ringbuf_full): the second and fourth snapshots repeat the one before.
SNAPSHOTS = [(1000, 5, 0), (2000, 5, 0), (3000, 9, 1), (4000, 9, 1), (5000, 12, 1)]


def snapshot(mark: int, produced: int, dropped: int) -> dict:
    return {"timestamp": TS + mark, "host": "h1", "instance": "tracer-1", "source": "syscalls",
            "mark": mark, "counters": [["syscall_events", "produced", "", produced, ""],
                                       ["syscall_events", "dropped", "ringbuf_full", dropped, ""],
                                       ["", "started", "", 1, ""]]}


def test_repeated_counters_are_stored_once(settings, rclient):
    for s in SNAPSHOTS:
        rclient.xadd(schema.accounting_stream("testhost"), {b"d": orjson.dumps(snapshot(*s))})
    res = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--drain",
                          "--redis-url", settings.redis_url, "--db", settings.db_path],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    eng = open_readonly(settings.db_path)
    with eng.connect() as c:
        rows = sorted(tuple(r) for r in c.execute(text(
            "SELECT metric, reason, stream_id, value FROM pipeline_accounting "
            "WHERE instance = 'tracer-1'")))
        total = {(et, m, r): v for et, m, r, v in c.execute(text(ACCOUNTING_SQL))
                 if et == "syscall_events"}
        # A window from just after the second snapshot to just after the fourth.
        win = {(et, m, r): (hi or 0) - (lo or 0) for _i, _h, _s, et, m, r, hi, lo, *_ in
               c.execute(text(WINDOW_ACCOUNTING_SQL), {"lo": 2500, "hi": 4500})
               if et == "syscall_events"}
        own = c.execute(text(
            "SELECT metric, event_type, COUNT(*), COUNT(DISTINCT value) FROM "
            "pipeline_accounting WHERE source = 'ingest' GROUP BY metric, event_type")).all()
    eng.dispose()
    assert rows == sorted([
        ("dropped", "ringbuf_full", 1000, 0), ("dropped", "ringbuf_full", 3000, 1),
        ("produced", "", 1000, 5), ("produced", "", 3000, 9), ("produced", "", 5000, 12),
        ("started", "", 1000, 1)])
    assert total == {("syscall_events", "produced", ""): 12,
                     ("syscall_events", "dropped", "ringbuf_full"): 1}
    assert win == {("syscall_events", "produced", ""): 4,
                   ("syscall_events", "dropped", "ringbuf_full"): 1}
    # The ingester's own counters: each value once (its final snapshot repeats them).
    assert own and all(n == distinct for _m, _et, n, distinct in own), own
