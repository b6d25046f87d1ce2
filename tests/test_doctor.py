"""`kernelsight doctor` changes nothing on the host unless given --fix; `make stress` applies
the fixes itself. Run in a private mount namespace where tracefs/debugfs are not mounted and
/lib/modules is empty, as on a fresh host, so the real mounts and links can be observed."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

UNMOUNTED = """
for m in /sys/kernel/debug/tracing /sys/kernel/tracing /sys/kernel/debug; do
  while umount "$m" 2>/dev/null; do :; done
done
mount -t tmpfs tmpfs /lib/modules
"""
AFTER = """
echo "rc=$rc"
echo "tracefs-mounts=$(awk '$3 == "tracefs"' /proc/self/mounts | wc -l)"
echo "debugfs-mounts=$(awk '$3 == "debugfs"' /proc/self/mounts | wc -l)"
echo "modules=$(ls -A /lib/modules/{rel} 2>/dev/null | tr '\\n' ' ')"
"""


def in_fresh_host(cmd: str, timeout: float = 300) -> tuple[str, dict[str, str]]:
    if os.geteuid() != 0:
        pytest.fail("needs root for a private mount namespace (CI and make test run as root)")
    script = UNMOUNTED + f"{cmd}\nrc=$?\n" + AFTER.format(rel=platform.release())
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=timeout, check=False)
    facts = dict(line.split("=", 1) for line in res.stdout.splitlines()[-4:] if "=" in line)
    assert "rc" in facts, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout + res.stderr, facts


KS = f"{sys.executable} -m kernelsight"


def test_doctor_without_fix_changes_nothing():
    out, f = in_fresh_host(f"COLUMNS=200 {KS} doctor --tracers syscalls")
    assert "Traceback" not in out, out
    assert f["tracefs-mounts"] == "0" and f["debugfs-mounts"] == "0", out
    assert f["modules"] == "", f"doctor wrote into /lib/modules: {f['modules']}\n{out}"
    assert f["rc"] == "1", out  # tracefs is missing: a required check fails
    assert "Nothing was changed. `kernelsight doctor --fix` would run:" in out
    assert "mount -t tracefs tracefs /sys/kernel/tracing" in out
    assert "ln -sfn " in out and f"/lib/modules/{platform.release()}/build" in out


def test_doctor_fix_mounts_and_links():
    out, f = in_fresh_host(f"COLUMNS=200 {KS} doctor --fix --tracers syscalls")
    assert "Traceback" not in out, out
    assert f["rc"] == "0", out
    assert f["tracefs-mounts"] != "0" and f["debugfs-mounts"] != "0", out
    assert f["modules"].split() == ["build", "source"], out
    assert "programs compile and attach" in out


def test_doctor_help_says_it_is_read_only():
    res = subprocess.run([sys.executable, "-m", "kernelsight", "doctor", "--help"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert "--fix" in res.stdout and "Read-only unless --fix" in res.stdout


def test_stresstest_applies_the_fixes_itself(tmp_path):
    """`make stress` on a fresh host: step 1 mounts tracefs and links the headers, and the
    syscalls tracer then starts."""
    out, f = in_fresh_host(
        f"COLUMNS=200 {KS} stresstest --duration 5 --collectors scraper,syscalls "
        f"--db {tmp_path}/st.db --log-dir {tmp_path}/logs", timeout=600)
    assert "Traceback" not in out, out
    assert "mounted tracefs at /sys/kernel/tracing" in out, out
    assert "syscalls (eBPF) started" in out, out
    assert "TEST RESULTS" in out
    assert f["modules"].split() == ["build", "source"], out
