"""Validation shared by the CLI and run_stress, so both fail with the same single line."""

from __future__ import annotations

from kernelsight.exceptions import ConfigError
from kernelsight.stress.registry import ALIASES, CATEGORIES

MIN_DURATION_S, MAX_DURATION_S = 1.0, 86400.0
MEM_HEADROOM_MIB = 512  # --mem-mib must leave this much of MemAvailable free


def check_duration(value: float | str | None) -> float:
    """Seconds as a float in [1, 86400]; anything else is one ConfigError line."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError("--duration (or KS_DURATION) is required, e.g. --duration 60")
    try:
        d = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--duration must be a number of seconds, got {value!r}") from None
    if not (MIN_DURATION_S <= d <= MAX_DURATION_S):  # also rejects NaN
        raise ConfigError(f"--duration must be between {MIN_DURATION_S:g} and "
                          f"{MAX_DURATION_S:g} seconds, got {value}")
    return d


def parse_only(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Category names in canonical order; None, '' or 'all' mean every category."""
    if value is None:
        return list(CATEGORIES)
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [ALIASES.get(s.strip().lower(), s.strip().lower()) for s in items if s.strip()]
    if not names or names == ["all"]:
        return list(CATEGORIES)
    bad = [n for n in names if n not in CATEGORIES]
    if bad:
        raise ConfigError(f"--only: unknown categor{'y' if len(bad) == 1 else 'ies'} "
                          f"{', '.join(bad)}; choose from {','.join(CATEGORIES)} or all")
    return [c for c in CATEGORIES if c in names]


def int_setting(name: str, value: int | str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise ConfigError(f"--{name} must be between {lo} and {hi}, got {n}")
    return n


def _mem_available_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1 << 20  # unknown: do not block the run on it


def check_mem_mib(value: int | str) -> int:
    """MiB to allocate; refuse sizes that would push the machine into the OOM killer."""
    n = int_setting("mem-mib", value, 1, 1 << 20)
    avail = _mem_available_mib()
    if n > avail - MEM_HEADROOM_MIB:
        raise ConfigError(f"--mem-mib {n} is more than this machine can spare "
                          f"({avail} MiB available, {MEM_HEADROOM_MIB} MiB kept free)")
    return n
