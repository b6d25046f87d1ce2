"""Without --log-dir the stack's children write to the parent's stderr: an ingester that
exits says why (once, under load, `kernelsight run` only printed "ingest exited with code 2"
because its children wrote to /dev/null)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from kernelsight.config import Settings
from kernelsight.runner import Stack
s = Settings().with_(db_path=sys.argv[1], redis_url="redis://127.0.0.1:1/0")
p = Stack(s)._spawn("ingest", ["ingest"])
sys.exit(p.popen.wait(60))
"""


def test_child_error_reaches_parent_stderr(tmp_path):
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ks.db")],
                       capture_output=True, text=True, timeout=90, check=False)
    assert p.returncode != 0, p.stderr
    assert "kernelsight: error:" in p.stderr and "127.0.0.1:1" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
