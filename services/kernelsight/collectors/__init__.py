"""Collector registry: module name -> Collector class, imported lazily so that the scraper
never needs bcc and a broken tracer cannot break the others."""

from __future__ import annotations

import importlib

from kernelsight.collectors.base import Collector
from kernelsight.exceptions import ConfigError

SCRAPER = "scraper"
TRACERS = ("syscalls", "pagefaults", "io", "sched")
ALL = (SCRAPER, *TRACERS)


def get(name: str) -> type[Collector]:
    if name not in ALL:
        raise ConfigError(f"unknown collector {name!r}; choose from {', '.join(ALL)}")
    mod = importlib.import_module(f"kernelsight.collectors.{name}")
    cls = mod.COLLECTOR
    assert cls.name == name, f"{name}: COLLECTOR.name is {cls.name}"
    return cls


def parse_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(ALL)
    for n in names:
        if n not in ALL:
            raise ConfigError(f"unknown collector {n!r} in --collectors; choose from "
                              f"{', '.join(ALL)} or 'all'")
    if not names:
        raise ConfigError("--collectors is empty; e.g. --collectors scraper,syscalls")
    return names
