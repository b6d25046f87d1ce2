"""Selecting part of a database: one run (``--run ID|latest``) or a time window (``--since``,
``--until``), so a report or a query covers that window only, even in a database that has
collected for weeks.

Timestamps are accepted as epoch seconds (``1764500000``, ``1764500000.5``), epoch
nanoseconds (``1764500000123456789``, any integer of 16 digits or more), ISO 8601
(``2026-11-30T10:15:00Z``, ``2026-11-30 10:15``; no zone means UTC) or relative to now
(``30s``, ``15m``, ``2h``, ``7d``: now minus that). Everything here is pure: no database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import click

from kernelsight.exceptions import ConfigError

LATEST = "latest"
_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# Epoch values below this many digits are seconds; at or above, nanoseconds.
_NS_DIGITS = 16
# Packed stream ids: <ms> << 19 | seq (schema.stream_id_to_int).
_SEQ_BITS = 19


@dataclass(frozen=True)
class Window:
    """[since_ns, until_ns] in wall-clock epoch ns; None is open. ``run_id``/``kind`` when the
    window is a run's span; ``open_end`` when the run has not ended (until = the time the
    window was resolved)."""

    since_ns: int | None = None
    until_ns: int | None = None
    run_id: str | None = None
    kind: str | None = None
    open_end: bool = False

    @property
    def whole(self) -> bool:
        return self.since_ns is None and self.until_ns is None

    @property
    def duration_s(self) -> float | None:
        if self.since_ns is None or self.until_ns is None:
            return None
        return max(self.until_ns - self.since_ns, 0) / 1e9

    @property
    def lo_id(self) -> int:
        """Packed stream id bound: positions <= this are at or before ``since``."""
        return -1 if self.since_ns is None else ns_to_id(self.since_ns)

    @property
    def hi_id(self) -> int:
        """Packed stream id bound: positions <= this are at or before ``until``."""
        return 2**63 - 1 if self.until_ns is None else ns_to_id(self.until_ns)

    def describe(self) -> str:
        def fmt(ns: int | None) -> str:
            if ns is None:
                return "…"
            return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

        if self.whole:
            return "whole database"
        span = f"{fmt(self.since_ns)} → {fmt(self.until_ns)} UTC"
        if self.run_id:
            state = " (still running)" if self.open_end else ""
            return f"run {self.run_id} ({self.kind}){state}: {span}"
        return f"window {span}"


def ns_to_id(ns: int) -> int:
    """The largest packed stream id whose millisecond is that of ``ns``."""
    return ((ns // 1_000_000) << _SEQ_BITS) | ((1 << _SEQ_BITS) - 1)


def parse_time(value: str, flag: str = "--since", now_ns: int | None = None) -> int:
    """A user's timestamp or relative age as epoch ns, or one-line ConfigError."""
    v = value.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if not v:
        raise ConfigError(f"{flag} is empty; give e.g. 15m, 2h, 7d, 1764500000 or "
                          "2026-11-30T10:15:00Z")
    m = _REL.match(v)
    if m:
        return now - int(float(m.group(1)) * _UNIT_S[m.group(2).lower()] * 1_000_000_000)
    if re.fullmatch(r"\d+", v):
        n = int(v)
        return n if len(v) >= _NS_DIGITS else n * 1_000_000_000
    if re.fullmatch(r"\d+\.\d+", v):  # epoch seconds with a fraction, exactly
        whole, frac = v.split(".")
        return int(whole) * 1_000_000_000 + int((frac + "0" * 9)[:9])
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{flag} {value!r} is not a time; use a relative age (30s, 15m, 2h, 7d), epoch "
            "seconds or ns (1764500000), or ISO 8601 (2026-11-30T10:15:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def parse_run(value: str) -> str:
    """``latest`` or a run id as `kernelsight` writes them (letters, digits, ``._:-``)."""
    v = value.strip()
    if v.lower() == LATEST:
        return LATEST
    if not _RUN_ID.match(v):
        raise ConfigError(f"--run {value!r} is not a run id; give `latest` or an id as listed "
                          "by `kernelsight query --runs` (letters, digits, . _ : -)")
    return v


@dataclass(frozen=True)
class Selection:
    """What the user asked for, before the database resolves a run id into a span."""

    run: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None

    @property
    def empty(self) -> bool:
        return self.run is None and self.since_ns is None and self.until_ns is None


def parse_selection(run: str | None = None, since: str | None = None,
                    until: str | None = None, now_ns: int | None = None) -> Selection:
    """Validate ``--run``/``--since``/``--until`` together (one line per mistake)."""
    if run is not None and (since is not None or until is not None):
        raise ConfigError("--run selects a run's own span; give --run or --since/--until, "
                          "not both")
    now = time.time_ns() if now_ns is None else now_ns
    s = parse_time(since, "--since", now) if since is not None else None
    u = parse_time(until, "--until", now) if until is not None else None
    if s is not None and u is not None and u <= s:
        raise ConfigError(f"--until ({until}) is not after --since ({since}); the window "
                          "would be empty")
    return Selection(parse_run(run) if run is not None else None, s, u)


def options(f: Callable) -> Callable:
    """``--run``, ``--since``, ``--until`` (and KS_RUN, KS_SINCE, KS_UNTIL) for a command."""
    f = click.option("--until", envvar="KS_UNTIL", show_envvar=True, default=None,
                     help="Window end: epoch s/ns, ISO 8601, or an age such as 5m "
                          "[default: now].")(f)
    f = click.option("--since", envvar="KS_SINCE", show_envvar=True, default=None,
                     help="Window start: epoch s/ns, ISO 8601 (2026-11-30T10:15:00Z), or an "
                          "age: 30s, 15m, 2h, 7d (now minus that).")(f)
    f = click.option("--run", "run", envvar="KS_RUN", show_envvar=True, default=None,
                     help="A run's own span: its id or `latest` [default: the latest run if "
                          "the database has runs, else the whole database].")(f)
    return f
