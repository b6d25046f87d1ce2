"""Every exported metric in one table: name, type and help (Prometheus naming.md: the
kernelsight_ prefix, base units, counters ending in _total, times as _timestamp_seconds).
Labels stay bounded: collector (5), event_type (11), reason (a known set), stream, table."""

from __future__ import annotations

from typing import NamedTuple


class Spec(NamedTuple):
    name: str
    type: str  # counter | gauge | histogram | info
    labels: tuple[str, ...]
    help: str


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("kernelsight_events_produced_total", "counter", ("collector", "event_type"),
         "Events a collector produced (including those it later had to drop)."),
    Spec("kernelsight_events_dropped_total", "counter", ("collector", "event_type", "reason"),
         "Events lost before reaching Redis, counted at their source, by reason."),
    Spec("kernelsight_ingest_events_stored_total", "counter", ("event_type",),
         "Events the ingester stored in the database."),
    Spec("kernelsight_ingest_duplicates_total", "counter", ("event_type",),
         "Entries delivered again and skipped because their stream_id was already stored."),
    Spec("kernelsight_ingest_dead_letters_total", "counter", ("event_type", "reason"),
         "Entries that could not be stored (malformed), kept in dead_letters."),
    Spec("kernelsight_ingest_db_lock_retries_total", "counter", (),
         "Ingest transactions retried because the database was locked."),
    Spec("kernelsight_ingest_db_errors_total", "counter", (),
         "Ingest transactions that failed with a database error (retried)."),
    Spec("kernelsight_ingest_redis_errors_total", "counter", (),
         "Times the ingester lost its Redis connection and reconnected."),
    Spec("kernelsight_ingest_reclaimed_entries_total", "counter", (),
         "Pending entries of a dead consumer claimed by a live one."),
    Spec("kernelsight_ingest_batch_duration_seconds", "histogram", (),
         "Time to validate, store and commit one ingest batch (this process's workers)."),
    Spec("kernelsight_retention_deleted_rows_total", "counter", ("table", "reason"),
         "Rows deleted by retention (time or size limit); not a loss."),
    Spec("kernelsight_retention_limit_seconds", "gauge", (),
         "Raw rows older than this are deleted by this ingester (--retention)."),
    Spec("kernelsight_retention_limit_bytes", "gauge", (),
         "Database size above which the oldest raw rows are deleted (--retention-size)."),
    Spec("kernelsight_stream_backlog_entries", "gauge", ("stream",),
         "Entries in a stream not yet stored: never delivered (lag) plus pending."),
    Spec("kernelsight_stream_length_entries", "gauge", ("stream",),
         "XLEN of a stream (includes acknowledged entries kept by --stream-retain)."),
    Spec("kernelsight_component_last_heartbeat_timestamp_seconds", "gauge", ("component",),
         "When a component last wrote its heartbeat to Redis (epoch seconds)."),
    Spec("kernelsight_collector_up", "gauge", ("collector",),
         "1 if the collector's heartbeat is fresh and it has not failed, else 0."),
    Spec("kernelsight_collector_last_sample_timestamp_seconds", "gauge", ("collector",),
         "Timestamp of the newest stored row from this collector (epoch seconds)."),
    Spec("kernelsight_database_size_bytes", "gauge", (),
         "Bytes on disk of the SQLite database file plus its WAL."),
    Spec("kernelsight_database_wal_size_bytes", "gauge", (),
         "Bytes on disk of the SQLite write-ahead log."),
    Spec("kernelsight_build_info", "gauge", ("version",),
         "Always 1; the version label says which KernelSight is running."),
    Spec("kernelsight_exporter_scrape_success", "gauge", ("source",),
         "1 if this scrape could read the source (database, redis), else 0."),
    Spec("kernelsight_exporter_scrape_duration_seconds", "gauge", (),
         "Time this scrape took to read the database and Redis."),
)}
