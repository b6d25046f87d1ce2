"""The shipped systemd unit: `kernelsight install-service` writes it, `systemd-analyze verify`
accepts it without a warning, and its settings match what `kernelsight run` reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from kernelsight import defaults
from kernelsight.cli import cli

REPO = Path(__file__).resolve().parents[1]
KS = str(Path(sys.executable).parent / "kernelsight")


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KS, "install-service", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, Path, str]:
    p = install("--prefix", str(tmp_path), "--db", "/srv/ks/kernelsight.db")
    assert p.returncode == 0, p.stderr
    unit = tmp_path / "etc/systemd/system/kernelsight.service"
    env = tmp_path / "etc/default/kernelsight"
    return unit, env, p.stdout


def test_install_writes_a_unit_systemd_accepts(installed) -> None:
    unit, env, out = installed
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.fail("systemd-analyze missing: run scripts/setup.sh (installs Debian's systemd)")
    p = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=120,
                       check=False)
    # verify exits 0 on unknown keys too, only warning: any line about our unit fails it.
    assert p.returncode == 0, p.stdout + p.stderr
    assert "kernelsight.service" not in p.stdout + p.stderr, p.stdout + p.stderr
    d = directives(unit.read_text())
    assert d["ExecStart"] == [f"{os.path.abspath(KS)} run"]
    assert f"ExecStart={os.path.abspath(KS)} run" in out
    assert d["ReadWritePaths"] == ["/srv/ks"]
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    assert "KS_DB_PATH=/srv/ks/kernelsight.db" in env.read_text().splitlines()


def test_unit_directives(installed) -> None:
    d = directives(installed[0].read_text())
    for key, want in {"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure",
                      "KillSignal": "SIGTERM", "KillMode": "mixed", "ProtectSystem": "strict",
                      "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                      "WatchdogSignal": "SIGTERM", "LimitMEMLOCK": "infinity"}.items():
        assert d[key] == [want], key
    assert d["ProtectHome"] in (["yes"], ["read-only"])
    assert set(d["CapabilityBoundingSet"][0].split()) == {"CAP_BPF", "CAP_PERFMON",
                                                           "CAP_SYS_ADMIN"}
    assert int(d["WatchdogSec"][0].removesuffix("s")) >= 10
    stop_s = int(d["TimeoutStopSec"][0].removesuffix("min")) * 60
    assert stop_s >= defaults.RUN_DRAIN_TIMEOUT_S + 60  # the drain, plus stopping collectors
    assert "EnvironmentFile" in d and d["EnvironmentFile"][0] == "-/etc/default/kernelsight"


def test_env_file_names_only_real_settings() -> None:
    """Every KS_* in the shipped environment file (set or commented) is read by `run`."""
    ctx = click.Context(cli)
    run = cli.get_command(ctx, "run")
    known = {v for p in run.params if isinstance(p, click.Option) and p.envvar
             for v in ([p.envvar] if isinstance(p.envvar, str) else p.envvar)}  # --db: 2
    known.add("KS_LOG_LEVEL")  # the group's option
    names = set(re.findall(r"^#?(KS_[A-Z_]+)=", (REPO / "deploy/systemd/kernelsight.env")
                           .read_text(), flags=re.M))
    assert names and names <= known, names - known
    assert "KS_DB_PATH" in names and "KS_METRICS_ADDR" in names


def test_existing_settings_are_kept(installed, tmp_path: Path) -> None:
    _unit, env, _ = installed
    env.write_text("KS_COLLECTORS=scraper\n")
    p = install("--prefix", str(tmp_path))
    assert p.returncode == 0 and "kept" in p.stdout
    assert env.read_text() == "KS_COLLECTORS=scraper\n"
    p = install("--prefix", str(tmp_path), "--force")
    assert p.returncode == 0 and "written" in p.stdout
    assert "KS_COLLECTORS=all" in env.read_text()


def test_relative_db_is_one_clear_line(tmp_path: Path) -> None:
    p = install("--prefix", str(tmp_path), "--db", "data/ks.db")
    assert p.returncode == 2 and "give an absolute path" in p.stderr
    assert "Traceback" not in p.stderr
