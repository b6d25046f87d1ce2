"""Run one stress workload for about a second through the real driver and worker processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernelsight.stress import run_stress

MiB = 1 << 20


@pytest.fixture
def run_workload(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    def run(name: str, **kw: Any) -> dict[str, Any]:
        before = set(psutil.Process().children(recursive=True))
        kw.setdefault("mem_mib", 64)
        kw.setdefault("disk_mib", 16)
        s = run_stress(1, workdir=str(tmp_path / "w"), only=[name], **kw)
        assert set(s) == {name, "stress_ng"}, s  # that workload only
        res = s[name]
        assert "error" not in res, res
        assert res["seconds"] > 0 and res["cpu_seconds"] > 0, res
        # It stopped and cleaned up: no process, no file left behind.
        assert set(psutil.Process().children(recursive=True)) - before == set()
        assert not (tmp_path / "w").exists()
        return res

    return run
