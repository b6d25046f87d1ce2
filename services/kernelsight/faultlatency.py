"""What a ``page_fault_totals`` row's latency covers, and so what to divide it by.

Since 2026-12-01 the tracer times every major fault but only the sampled minor faults (the
ones that become ``page_fault_events``): a minor row's ``latency_sum_ns`` is the sum over its
``sampled_events``, a major row's over its ``fault_count``. Rows written before by earlier
versions timed every minor fault (divide by ``fault_count``).

A writer of this version records in ``schema_meta`` (KEY, epoch ns) the first instant of the
new meaning: 0 when it creates the database, the moment it first opens one created before.
Minor rows stamped before it are read the old way; a database without the key (written only
by earlier versions) is read the old way throughout.

The mark is a time standing in for the collectors' version, so a mixed upgrade is misread in
either direction: rows of an older collector still running after the writer was upgraded are
read the new way (their minor mean too high), and rows of an already upgraded collector that
reached the database before an upgraded writer first opened it are read the old way (too
low). Upgrade the writer (ingest) together with the collectors, or first. copy-db carries a
source's mark (copydb).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Connection, Table, select

log = logging.getLogger(__name__)

KEY = "pf_minor_latency_sampled_from_ns"
NEVER = 2**63 - 1

# The number of faults a totals row's latency_sum_ns covers (binds :pf_from).
TIMED_SQL = ("CASE WHEN fault_type = 'minor' AND timestamp >= :pf_from THEN sampled_events "
             "ELSE fault_count END")


def mark(conn: Connection, meta: Table, created: bool, totals: Table) -> None:
    """Called by a writer opening a database (in its schema transaction): record the first
    instant of sampled minor latency unless recorded. ``created``: this writer made the
    schema (0: every row); else now, or 0 when ``totals`` holds no row yet."""
    if conn.execute(select(meta.c.value).where(meta.c.key == KEY)).scalar() is not None:
        return
    old = not created and conn.execute(select(totals.c.id).limit(1)).first() is not None
    conn.execute(meta.insert().values(key=KEY, value=str(time.time_ns() if old else 0)))
    if old:
        log.warning("page_fault_totals: minor-fault latency now covers the sampled faults "
                    "only (divide by sampled_events); rows before this upgrade keep their "
                    "meaning (%s in schema_meta)", KEY)


def sampled_from_ns(conn: Connection, meta: Table) -> int:
    """The instant from which minor rows carry sampled latency (0: every row; no key: none)."""
    v = conn.execute(select(meta.c.value).where(meta.c.key == KEY)).scalar()
    try:
        return int(v) if v is not None else NEVER
    except ValueError:
        return NEVER
