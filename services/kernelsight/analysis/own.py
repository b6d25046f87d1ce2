"""KernelSight's own processes, so samples of "slow syscalls" never show our own waits.

Collectors and ingesters record their pid in ``pipeline_accounting.instance``
(``<source>@<host>:<pid>:<nonce>``): those pids are exact. The private redis-server and the
``kernelsight`` launcher record no pid yet, so they are recognised by comm (which would also
hide a user's own redis-server on the same host: a known limit until the runner records the
private server's pid)."""

from __future__ import annotations

import re

from sqlalchemy import Connection, text

# The launcher (console script) and the private redis-server's threads (Redis 7).
OWN_COMMS = ("kernelsight", "redis-server", "jemalloc_bg_thd", "bio_close_file", "bio_aof",
             "bio_lazy_free", "io_thd_1", "io_thd_2", "io_thd_3")
_PID = re.compile(r":(\d{1,10}):[0-9a-f]+$")


def own_pids(conn: Connection) -> set[int]:
    """Pids of the collector and ingest instances that wrote accounting into this database."""
    pids = set()
    for (inst,) in conn.execute(text("SELECT DISTINCT instance FROM pipeline_accounting")):
        m = _PID.search(str(inst))
        if m:
            pids.add(int(m.group(1)))
    return pids


def not_own_sql(conn: Connection, pid_col: str = "pid", comm_col: str = "comm") -> str:
    """A SQL condition excluding our processes (pids are integers, comms constants)."""
    pids = ", ".join(str(p) for p in sorted(own_pids(conn))) or "-1"
    comms = ", ".join(f"'{c}'" for c in OWN_COMMS)
    return f"({pid_col} NOT IN ({pids}) AND {comm_col} NOT IN ({comms}))"
