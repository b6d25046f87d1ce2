"""Workload registry: category name -> module ``kernelsight.stress.workloads.<name>``, imported
lazily (like collectors.get()), so the driver and the CLI never import a workload they do not
run. Each workload module has NAME, run(ctx) and its own tunables."""

from __future__ import annotations

import importlib
from types import ModuleType

from kernelsight.exceptions import ConfigError

# Canonical order: the summary, parse_only() and the driver follow it.
CATEGORIES = ("cpu", "mem", "io", "disk", "fs", "net", "slow")
ALIASES = {"memory": "mem", "network": "net", "sync": "io", "files": "fs", "syscalls": "slow"}


def get(name: str) -> ModuleType:
    """The workload module for category ``name``."""
    if name not in CATEGORIES:
        raise ConfigError(f"unknown stress workload {name!r}; choose from "
                          f"{','.join(CATEGORIES)}")
    mod = importlib.import_module(f"kernelsight.stress.workloads.{name}")
    assert name == mod.NAME, f"{name}: NAME is {mod.NAME}"
    return mod
