"""The ingester: Redis streams -> SQLite, exactly once. One concept per module:

- ``wire``: the pipelined Redis connection, XREADGROUP request and reply shapes
- ``validate``: entry -> row tuple or BadEntry (pure: schema only)
- ``writer``: one SQLite transaction per batch and its retry policy; IngestStats
- ``reclaim``: own pending entries, dead consumers' entries, unknown streams
- ``retention``: trimming streams to acknowledged entries
- ``worker``: the Ingester loop, heartbeat, signals
- ``supervisor``: run_ingest and the multi-process Supervisor
- ``progress``: backlog, drained_until, and waiting for the group to catch up

This module only re-exports.
"""

from kernelsight.ingest.progress import backlog, drained_until, wait_drained
from kernelsight.ingest.supervisor import run_ingest, worker_count
from kernelsight.ingest.worker import Ingester
from kernelsight.ingest.writer import IngestStats

__all__ = ["IngestStats", "Ingester", "backlog", "drained_until", "run_ingest", "wait_drained",
           "worker_count"]
