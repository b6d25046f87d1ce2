"""Maintenance on PostgreSQL (rollups, retention by dropping day partitions)."""

from __future__ import annotations

import logging

from kernelsight.config import Settings

log = logging.getLogger(__name__)


class PgMaintenance:
    """Placeholder until retention on PostgreSQL lands: does nothing, says so once."""

    errors = 0
    passes = 0
    deleted: dict[str, int] = {}  # noqa: RUF012

    @classmethod
    def for_pg(cls, s: Settings) -> PgMaintenance:
        return cls()

    def start(self) -> PgMaintenance:
        log.warning("retention and rollups are not run on PostgreSQL yet")
        return self

    def stop(self) -> None:
        pass
