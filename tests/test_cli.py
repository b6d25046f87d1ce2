"""Bad input gets one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kernelsight.redis_server import free_port


def ks(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
    # Bad-input cases are not about /metrics: a port held by another ingester on this host
    # must not change which error comes first.
    e["KS_METRICS_ADDR"] = "off"
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=60, env=e, check=False)


@pytest.mark.parametrize("args,env,needle", [
    (["ingest", "--db", "TMP/x.db"], {"KS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
     "cannot reach Redis"),
    (["ingest", "--db", "TMP/x.db"], {"KS_REDIS_URL": "http://nope"}, "is not valid"),
    (["run", "--duration", "5", "--db", "/proc/ks.db"], {}, "--db /proc/ks.db"),
    (["run", "--duration", "5", "--db", "/tmp"], {}, "is a directory"),
    (["run", "--duration", "0", "--db", "TMP/x.db"], {}, "Invalid value for '--duration'"),
    (["run", "--duration", "5", "--collectors", "scraper,nope"], {}, "unknown collector 'nope'"),
    (["collect", "--interval", "-1"], {"KS_REDIS_URL": "redis://127.0.0.1:1/0"},
     "--interval must be"),
    (["collect", "--procfs", "/tmp"], {"KS_REDIS_URL": "redis://127.0.0.1:1/0"},
     "not a procfs mount"),
    (["collect"], {}, "needs Redis"),
    (["report", "--db", "/nonexistent/ks.db"], {}, "no database at"),
    (["ingest", "--retention", "7x"], {"KS_REDIS_URL": "redis://127.0.0.1:1/0"},
     "--retention '7x' is not a duration"),
    (["ingest"], {"KS_REDIS_URL": "redis://127.0.0.1:1/0", "KS_RETENTION": "20s"},
     "shorter than one minute"),
    (["run", "--duration", "5", "--retention-size", "2 gigs"], {},
     "--retention-size '2 gigs' is not a size"),
    (["run", "--duration", "5", "--retention", "30d", "--rollup-retention", "7d"], {},
     "rollups must outlive raw rows"),
])
def test_bad_input_one_line(args, env, needle, tmp_path):
    # a fresh path each time (a /tmp/x.db left by another version would fail differently)
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    p = ks(*args, env=env)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert needle in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len([ln for ln in lines if "rror" in ln]) == 1, p.stderr


def test_help_has_examples():
    for cmd in ("run", "collect", "trace", "ingest", "query", "report"):
        p = ks(cmd, "--help")
        assert p.returncode == 0 and "Examples:" in p.stdout, cmd
        assert "KS_" in p.stdout, cmd
