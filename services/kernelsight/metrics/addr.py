"""``--metrics-addr`` parsing, apart from the server so that a process serving no metrics
never imports prometheus_client (ingest start-up time)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from kernelsight import defaults
from kernelsight.exceptions import ConfigError

OFF = "off"
ENV = "KS_METRICS_ADDR"


def parse_addr(value: str) -> tuple[str, int] | None:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port); 'off' or '' -> None; else ConfigError."""
    v = value.strip()
    if v.lower() in ("", OFF):
        return None
    host, sep, port = v.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics-addr {value!r} is not HOST:PORT; use e.g. "
                          f"{defaults.METRICS_ADDR}, 0.0.0.0:9477 or 'off'")
    return host, int(port)


def resolve_addr(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """The address to serve: the flag, else $KS_METRICS_ADDR (set but empty means off), else
    the default. click drops empty environment values, hence this."""
    env = os.environ if env is None else env
    if flag is not None:
        v = flag
    elif ENV in env:
        v = env[ENV]
    else:
        v = defaults.METRICS_ADDR
    return OFF if parse_addr(v) is None else v.strip()
