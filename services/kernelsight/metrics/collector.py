"""A Prometheus collector that reads the pipeline's durable record at scrape time.

Collectors and ingest workers are separate processes, so in-process counters would need
prometheus_client's multiprocess mode (which forbids custom collectors). Instead each scrape
reads what the pipeline already records: pipeline_accounting (cumulative per instance: MAX
per instance, SUM over instances, as report.ACCOUNTING_SQL), dead_letters, the newest row per
collector (an indexed MAX(timestamp)), the file sizes, and from Redis the heartbeats and each
stream's length, lag and pending. The database is opened read-only, so a scrape never takes
the ingest WriteLock and never blocks a commit.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine, text

from kernelsight import schema, status
from kernelsight.config import Settings
from kernelsight.metrics.names import SPECS
from kernelsight.streams import connect

log = logging.getLogger(__name__)

DEAD_SQL = "SELECT event_type, reason, COUNT(*) FROM dead_letters GROUP BY 1, 2"
# Accounting metric of the ingester (event_type '') -> exported counter.
INGEST_COUNTERS = {
    "lock_retries": "kernelsight_ingest_db_lock_retries_total",
    "db_errors": "kernelsight_ingest_db_errors_total",
    "redis_errors": "kernelsight_ingest_redis_errors_total",
    "reclaimed": "kernelsight_ingest_reclaimed_entries_total",
}
PER_TYPE = {"stored": "kernelsight_ingest_events_stored_total",
            "duplicates": "kernelsight_ingest_duplicates_total"}


def _family(name: str) -> Metric:
    spec = SPECS[name]
    cls = CounterMetricFamily if spec.type == "counter" else GaugeMetricFamily
    return cls(name, spec.help, labels=list(spec.labels))


def _version() -> str:
    try:
        return version("kernelsight")
    except PackageNotFoundError:
        return "unknown"


class PipelineCollector:
    """Register on a private CollectorRegistry (never the global one)."""

    def __init__(self, settings: Settings) -> None:
        self.db_path = settings.db_path
        self.redis_url = settings.redis_url
        self._engine: Engine | None = None
        self._r: redis.Redis | None = None
        self.version = _version()
        # The retention limits this process enforces (its ingester runs the maintenance).
        self.retention_s: float | None = None
        self.retention_bytes: int | None = None
        try:
            self.retention_s = settings.retention_s
            self.retention_bytes = settings.retention_size_bytes
        except (AttributeError, ValueError):  # an older Settings, or a value checked elsewhere
            pass

    def _db(self) -> Engine | None:
        if self._engine is None and Path(self.db_path).is_file():
            from kernelsight.db import engine_for

            self._engine = engine_for(self.db_path, readonly=True)
        return self._engine

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        fams = {name: _family(name) for name, spec in SPECS.items()
                if spec.type in ("counter", "gauge")}
        fams["kernelsight_build_info"].add_metric([self.version], 1)
        if self.retention_s:
            fams["kernelsight_retention_limit_seconds"].add_metric([], self.retention_s)
        if self.retention_bytes:
            fams["kernelsight_retention_limit_bytes"].add_metric([], self.retention_bytes)
        ok_db = self._collect_db(fams)
        ok_redis = self._collect_redis(fams)
        fams["kernelsight_exporter_scrape_success"].add_metric(["database"], int(ok_db))
        fams["kernelsight_exporter_scrape_success"].add_metric(["redis"], int(ok_redis))
        fams["kernelsight_exporter_scrape_duration_seconds"].add_metric(
            [], time.perf_counter() - t0)
        yield from fams.values()

    def _collect_db(self, fams: dict[str, Metric]) -> bool:
        files = status.database_files(self.db_path)
        fams["kernelsight_database_size_bytes"].add_metric([], files["main"] + files["wal"])
        fams["kernelsight_database_wal_size_bytes"].add_metric([], files["wal"])
        eng = self._db()
        if eng is None:
            return False
        try:
            acc = status.accounting_by_source(eng)
            with eng.connect() as c:
                dead = list(c.execute(text(DEAD_SQL)))
                newest = {}
                for et in schema.EVENT_TYPES:
                    # MAX over the timestamp index: one B-tree descent, not a scan.
                    v = c.execute(text(f'SELECT MAX(timestamp) FROM "{et.name}"')).scalar()
                    if v is not None:
                        newest[et.source] = max(newest.get(et.source, 0), int(v))
        except Exception as e:  # noqa: BLE001 - a scrape reports failure, it never crashes
            log.warning("metrics: cannot read %s: %s", self.db_path, e)
            return False
        per: dict[str, defaultdict] = {n: defaultdict(int) for n in SPECS}
        for src, et, metric, reason, v in acc:
            if metric == schema.PRODUCED and et:
                per["kernelsight_events_produced_total"][(src, et)] += v
            elif metric == schema.DROPPED and et:
                per["kernelsight_events_dropped_total"][(src, et, reason)] += v
            elif metric == status.RETENTION_METRIC:
                per["kernelsight_retention_deleted_rows_total"][(et, reason or "time")] += v
            elif src == "ingest" and metric in PER_TYPE and et:
                per[PER_TYPE[metric]][(et,)] += v
            elif src == "ingest" and not et and metric in INGEST_COUNTERS:
                per[INGEST_COUNTERS[metric]][()] += v
        for et, reason, n in dead:
            per["kernelsight_ingest_dead_letters_total"][(et, reason.split(":")[0])] += int(n)
        for name, values in per.items():
            for labels, v in sorted(values.items()):
                fams[name].add_metric(list(labels), v)
        for src, ts in sorted(newest.items()):
            fams["kernelsight_collector_last_sample_timestamp_seconds"].add_metric(
                [src], ts / 1e9)
        return True

    def _collect_redis(self, fams: dict[str, Metric]) -> bool:
        if not self.redis_url:
            return False
        if self._r is None:
            self._r = connect(self.redis_url, 2)
        try:
            beats = status.heartbeats(self._r)
            states = status.collector_states(self._r)
            streams = status.stream_stats(self._r)
        except redis.RedisError as e:
            log.warning("metrics: cannot read Redis: %s", e)
            return False
        now = time.time_ns()
        for comp, b in sorted(beats.items()):
            fams["kernelsight_component_last_heartbeat_timestamp_seconds"].add_metric(
                [comp], b["timestamp"] / 1e9)
        from kernelsight import collectors

        for name in collectors.ALL:
            b = beats.get(name)
            if b is None and name not in states:
                continue  # not configured here: no series rather than a false 0
            fresh = b is not None and (now - b["timestamp"]) / 1e9 <= status.STALE_S
            failed = states.get(name, {}).get("state") == "failed"
            fams["kernelsight_collector_up"].add_metric([name], int(fresh and not failed))
        for x in streams:
            fams["kernelsight_stream_backlog_entries"].add_metric([x.stream], x.backlog)
            fams["kernelsight_stream_length_entries"].add_metric([x.stream], x.length)
        return True
