"""Database maintenance: per-minute rollups and retention (time, size), off the ingest path.

policy.py plans (pure), prune.py executes on SQLite, rollup.py writes ``<table>_1m``,
service.py is the thread that schedules them in the ingest process."""

from kernelsight.maintenance.counts import raw_complete_from, rollup_counts
from kernelsight.maintenance.policy import RetentionPolicy, TableStats, beyond_size, beyond_time
from kernelsight.maintenance.rollup import ROLLUPS, Rollup
from kernelsight.maintenance.service import Maintenance

__all__ = ["ROLLUPS", "Maintenance", "RetentionPolicy", "Rollup", "TableStats", "beyond_size",
           "beyond_time", "raw_complete_from", "rollup_counts"]
