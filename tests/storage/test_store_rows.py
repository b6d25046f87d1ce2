"""storage.rows.store_rows (copy-db's way in): the same idempotent insert on SQLite and a real
PostgreSQL, rows of past days land in their own day partitions, NUL rows are handed back."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import text

from kernelsight import schema
from kernelsight.db import open_db
from kernelsight.loadgen import make_event
from kernelsight.storage import postgres
from kernelsight.storage.rows import store_rows

DAY = postgres.DAY_NS
T0 = 1_700_000_000 * 10**9  # 2023-11-14


def rows(n: int) -> list[dict]:
    et = schema.BY_NAME["syscall_events"]
    rng = random.Random(3)
    return [{**make_event(et, rng, "h1", T0 + (i % 3) * DAY + i), "stream_id": i + 1}
            for i in range(n)]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_store_rows_is_idempotent_on_both(engine, tmp_path, request):
    target = str(tmp_path / "ks.db") if engine == "sqlite" else request.getfixturevalue("pg_url")
    eng = open_db(target)
    try:
        rs = rows(300)
        bad = {**rows(1)[0], "stream_id": 10_000, "comm": "a\x00b"}
        stored, refused = store_rows(eng, "syscall_events", [*rs, bad])
        if engine == "postgres":
            assert (stored, refused) == (300, [bad])
            with eng.connect() as c:
                assert sorted(postgres.partitions(c, "syscall_events")) == [
                    T0 // DAY * DAY + d * DAY for d in range(3)]
                assert c.execute(text("SELECT COUNT(*) FROM syscall_events_default")
                                 ).scalar() == 0
        else:
            assert (stored, refused) == (301, [])  # SQLite text holds NUL
        assert store_rows(eng, "syscall_events", rs) == (0, [])  # again: duplicates only
        # the same stream ids from another host are new rows
        assert store_rows(eng, "syscall_events", [{**r, "host": "h2"} for r in rs[:10]]
                          ) == (10, [])
    finally:
        eng.dispose()
