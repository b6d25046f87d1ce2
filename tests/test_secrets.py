"""The Redis password never shows: not in errors or logs (every URL form redis-py accepts),
and the docs and --help never put it on a command line (`redis-cli -a`, a URL in argv)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernelsight.config import redact

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Sup3r-s3cret"


@pytest.mark.parametrize("url, shown", [
    (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    (f"rediss://ks:{SECRET}@redis.example:6380/1", "rediss://ks:***@redis.example:6380/1"),
    (f"unix://:{SECRET}@/run/ks/redis.sock?db=0", "unix://:***@/run/ks/redis.sock?db=0"),
    (f"unix:///run/ks/redis.sock?password={SECRET}", "unix:///run/ks/redis.sock?password=***"),
    (f"redis://127.0.0.1:6379/0?password={SECRET}", "redis://127.0.0.1:6379/0?password=***"),
    (f"redis://127.0.0.1/0?db=1&Password={SECRET}&x=1", "redis://127.0.0.1/0?db=1&Password=***&x=1"),
    (f"redis://:{SECRET}#frag@h:1/0", "redis://:***@h:1/0"),
    (f"redis://:{SECRET}@x/y@h:1/0", "redis://:***@h:1/0"),
    (f"redis://:{SECRET}@[::1", "redis://:***@[::1"),
    (f"redis://ks:{SECRET}@h:1/0?password={SECRET}", "redis://ks:***@h:1/0?password=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://ks@h:1/0", "redis://ks@h:1/0"),
])
def test_redact_every_form(url, shown):
    assert redact(url) == shown
    assert SECRET not in redact(url)


def ks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("url", [
    f"redis://127.0.0.1:1/0?password={SECRET}",  # unreachable: "cannot reach Redis at ..."
    f"unix://:{SECRET}@/nonexistent/redis.sock",
    f"redis://:{SECRET}@[::1",  # not even a URL: "redis URL ... is not valid"
    f"redis://:{SECRET}@127.0.0.1:notaport/0",
])
def test_errors_never_show_the_password(url):
    res = ks("health", "ingest", "--redis-url", url)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    assert "Redis" in res.stderr or "redis" in res.stderr
    assert SECRET not in res.stdout + res.stderr, res.stderr


DOC_FILES = ["README.md", "Makefile", *map(str, Path(ROOT).glob("docs/**/*")),
             *map(str, Path(ROOT).glob("services/**/*.py")),
             *map(str, Path(ROOT).glob("deploy/**/*"))]
ON_ARGV = [
    re.compile(r"redis-cli[^\n]*\s-a\s"),  # redis-cli -a PASSWORD
    re.compile(r"redis-cli[^\n]*\s-u\s"),  # redis-cli -u redis://:PASSWORD@...
    re.compile(r"redis-cli[^\n]*--pass\b"),
    re.compile(r"--redis-url[= ]+\S*://[^/\s]*:[^/\s@]+@"),  # a URL with a password as a flag
]


def test_docs_and_help_never_put_the_password_on_a_command_line():
    found = []
    for f in DOC_FILES:
        p = ROOT / f
        if not p.is_file():
            continue
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if any(r.search(line) for r in ON_ARGV):
                found.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    helps = ks("--help").stdout
    for cmd in re.findall(r"^  (\S+)", helps.split("Commands:")[-1], re.M):
        out = ks(cmd, "--help").stdout
        found += [f"kernelsight {cmd} --help: {ln.strip()}" for ln in out.splitlines()
                  if any(r.search(ln) for r in ON_ARGV)]
    assert "REDISCLI_AUTH" in (ROOT / "README.md").read_text()
    assert not found, "\n".join(found)
