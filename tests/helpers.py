"""Realistic valid events of every type, for pipeline tests and the load generator's tests."""

from __future__ import annotations

import random
import time

from kernelsight import schema


def valid_row(et: schema.EventType, i: int = 0, rng: random.Random | None = None) -> dict:
    rng = rng or random.Random(i)
    row: dict = {"timestamp": time.time_ns(), "host": "testhost"}
    for c in et.columns:
        if c.kind == "int":
            lo = 0 if c.lo is None else int(c.lo)
            row[c.name] = rng.randint(max(lo, 0), 1 if c.hi == 1 else 10**9)
        elif c.kind == "float":
            row[c.name] = rng.random() * 1000
        else:
            row[c.name] = rng.choice(c.choices) if c.choices else f"s{i % 97}"
    return row
