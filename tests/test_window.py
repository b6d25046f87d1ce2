"""--run / --since / --until parsing (pure), and the one-line errors the commands give."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from kernelsight.db import open_db
from kernelsight.exceptions import ConfigError
from kernelsight.window import Window, ns_to_id, parse_run, parse_selection, parse_time

NOW = 1_764_500_000 * 10**9 + 123_456_789  # a fixed "now" (ns)
S = 10**9


@pytest.mark.parametrize("value,expected", [
    ("30s", NOW - 30 * S),
    ("15m", NOW - 15 * 60 * S),
    ("2h", NOW - 2 * 3600 * S),
    ("7d", NOW - 7 * 86400 * S),
    ("1.5h", NOW - 5400 * S),
    (" 15M ", NOW - 15 * 60 * S),
    ("1764500000", 1_764_500_000 * S),
    ("1764500000.25", 1_764_500_000 * S + 250_000_000),
    ("1764500000123456789", 1_764_500_000_123_456_789),
    ("2026-11-30T10:15:00Z", int(datetime(2026, 11, 30, 10, 15, tzinfo=UTC).timestamp()) * S),
    ("2026-11-30 10:15", int(datetime(2026, 11, 30, 10, 15, tzinfo=UTC).timestamp()) * S),
    ("2026-11-30T12:15:00+02:00",
     int(datetime(2026, 11, 30, 10, 15, tzinfo=UTC).timestamp()) * S),
    ("2026-11-30T10:15:00.5Z",
     int(datetime(2026, 11, 30, 10, 15, tzinfo=UTC).timestamp()) * S + 500_000_000),
])
def test_parse_time(value, expected):
    assert parse_time(value, now_ns=NOW) == expected


@pytest.mark.parametrize("value", ["yesterday", "15", "-5m", "15 minutes", "2026-13-01", "",
                                   "1e9", "5y"])
def test_parse_time_rejects(value):
    # "15" is 15 s after the epoch, not an age: accepted as a timestamp; all else refused
    if value == "15":
        assert parse_time(value, now_ns=NOW) == 15 * S
        return
    with pytest.raises(ConfigError) as e:
        parse_time(value, "--since", now_ns=NOW)
    assert "\n" not in str(e.value) and "--since" in str(e.value)


def test_parse_run_and_selection():
    assert parse_run("latest") == "latest" and parse_run("LATEST") == "latest"
    assert parse_run("stress-20261130T101500-1a2b3c") == "stress-20261130T101500-1a2b3c"
    for bad in ("x y", "", "a" * 65, "../etc", "-x", "id;drop"):
        with pytest.raises(ConfigError, match="--run"):
            parse_run(bad)
    with pytest.raises(ConfigError, match="not both"):
        parse_selection("latest", since="15m")
    with pytest.raises(ConfigError, match="not after"):
        parse_selection(since="1h", until="2h", now_ns=NOW)
    sel = parse_selection(since="2h", until="1h", now_ns=NOW)
    assert (sel.since_ns, sel.until_ns) == (NOW - 7200 * S, NOW - 3600 * S)
    assert parse_selection().empty


def test_window_bounds_are_stream_positions():
    w = Window(NOW - S, NOW)
    # every id of the millisecond of `until` is inside, the next millisecond's first is not
    ms = NOW // 1_000_000
    assert (ms << 19) <= w.hi_id < ((ms + 1) << 19)
    assert w.hi_id == ns_to_id(NOW) and w.duration_s == 1.0
    assert Window().whole and Window().lo_id == -1 and Window().hi_id == 2**63 - 1


def _ks(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


@pytest.mark.parametrize("args,needle", [
    (["report", "--run", "x y"], "--run 'x y' is not a run id"),
    (["report", "--since", "yesterday"], "--since 'yesterday' is not a time"),
    (["report", "--until", "soon"], "--until 'soon' is not a time"),
    (["report", "--run", "latest", "--since", "1h"], "not both"),
    (["report", "--since", "1h", "--until", "2h"], "is not after --since"),
    (["report", "--run", "no-such-run"], "--run no-such-run: no such run"),
    (["report", "--run", "latest"], "this database has no runs yet"),
    (["query", "--demo", "--since", "tomorrow"], "--since 'tomorrow' is not a time"),
    (["query", "--demo", "--run", "no-such-run"], "no such run"),
])
def test_bad_selection_one_line(tmp_path, args, needle):
    db = tmp_path / "ks.db"
    open_db(db).dispose()
    p = _ks(*args, "--db", str(db))
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert needle in p.stderr, p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr
