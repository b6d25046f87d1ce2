"""Strings from Redis or the kernel reach the terminal as escaped plain text.

A Redis client (or a traced process naming itself) chooses accounting reasons, metric names,
failure details, comm, syscall and device names. They go through a real Redis and a real
`kernelsight ingest --drain`, then `kernelsight report` and `kernelsight query --demo` run as
processes, with and without a colour terminal: no traceback, no ESC or other control byte from
the data, no hyperlink, markup shown literally."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import orjson
import pytest
import redis

from kernelsight import schema

H = "testhost"  # the settings fixture's host

OSC8 = "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\"
HOSTILE = [
    "[/x]",
    "[link=http://evil.example/]click[/link]",
    "[bold red]loud[/]",
    OSC8,
    "\x1b[2J\x1b[H",
    "\x1b[?1049h",
    "\x07\x08\r\x0b\x7f tab\there",
    "\x9b2J \x9d8;;http://evil.example/\x9c",
    "\u202eevil\u202c",
    ":warning: :smile:",
    "\x00nul",
]
BIG = "[/x]\x1b[2J" * 6000  # ~60 KiB


def payload(obj: object) -> bytes:
    return orjson.dumps(obj)


def event_row(et: schema.EventType, text: str, ts: int) -> dict:
    row: dict = {"timestamp": ts, "host": "h"}
    for c in et.columns:
        if c.kind == "int":
            row[c.name] = max(int(c.lo or 0), 1) if c.hi is None or c.hi >= 1 else int(c.lo)
        elif c.kind == "float":
            row[c.name] = 1.5
        elif c.choices:
            row[c.name] = c.choices[0]
        else:
            row[c.name] = text[:c.maxlen]
    return row


def publish_hostile(r: redis.Redis) -> None:
    ts = 1_800_000_000 * 10**9
    counters = []
    for i, s in enumerate([*HOSTILE, BIG]):
        counters += [
            ["syscall_events", "dropped", s, i + 1, ""],
            [s[:64], "dropped", f"r{i}", 1, s],
            ["", s[:64], "", 1, ""],
        ]
    counters.append(["", "failed", "", 1, "\n".join(HOSTILE)])
    counters.append(["", "failed", "", 1, BIG])
    for i, c in enumerate(counters):  # one entry each: the ingester refuses some, stores others
        r.xadd(schema.accounting_stream(H), {b"d": payload({
            "timestamp": ts, "host": "h", "instance": f"evil-{i}", "source": "scraper",
            "counters": [c]})})
    for name in ("syscall_events", "io_latency_stats", "block_stats", "page_fault_events"):
        et = schema.BY_NAME[name]
        for i, s in enumerate(HOSTILE):
            r.xadd(et.stream_for(H), {b"d": payload(event_row(et, s, ts + i))})
        bad = event_row(et, "x", ts)  # dead letters whose reasons carry the hostile strings
        r.xadd(et.stream_for(H), {b"d": payload({**bad, OSC8: 1, "[/x]": 2})})
        r.xadd(et.stream_for(H), {b"d": b'{"timestamp": "\xff\xfe\x1b[2J", "host": "[/x]"}'})
        r.xadd(et.stream_for(H), {b"d": b'{"host": "\\ud800\\u001b[2J"}'})
        r.xadd(et.stream_for(H), {b"d": payload({**bad, "timestamp": BIG})})


def ks(*args: str, colour: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="120")
    env.pop("NO_COLOR", None)
    if colour:
        env.update(FORCE_COLOR="1", TERM="xterm-256color")
    else:
        env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          timeout=300, env=env, check=False)


def check_output(out: bytes, colour: bool, literal: bool = True) -> None:
    text = out.decode("utf-8")  # must be valid UTF-8
    if colour:  # our own styles: SGR sequences only, never OSC, cursor or screen controls
        assert "\x1b]" not in text, "an OSC sequence (e.g. a hyperlink) reached the terminal"
        stripped = re.sub(r"\x1b\[[0-9;]*m", "", text)
    else:
        stripped = text
    bad = sorted({f"U+{ord(c):04X}" for c in stripped
                  if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
                  or c in "\u202e\u202c"})
    assert not bad, f"control characters from the data reached the output: {bad}"
    assert "⚠" not in stripped and "😄" not in stripped, "emoji codes were interpreted"
    assert not literal or "[/x]" in stripped, "markup from the data was not shown literally"


@pytest.mark.parametrize("colour", [False, True], ids=["pipe", "terminal"])
def test_hostile_strings_render_as_plain_text(settings, rclient, tmp_path, colour):
    publish_hostile(rclient)
    ing = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--drain",
                          "--redis-url", settings.redis_url, "--db", settings.db_path],
                         capture_output=True, text=True, timeout=300, check=False)
    assert ing.returncode == 0, ing.stderr[-3000:]
    rep = ks("report", "--db", settings.db_path, colour=colour)
    assert b"Traceback" not in rep.stderr, rep.stderr.decode(errors="replace")[-3000:]
    assert rep.returncode == 1, rep.stderr.decode(errors="replace")[-3000:]  # verdict FAIL
    assert b"Dropped by reason" in rep.stdout
    check_output(rep.stdout, colour)
    check_output(rep.stderr, colour, literal=False)
    qry = ks("query", "--demo", "--db", settings.db_path, colour=colour)
    assert qry.returncode == 0 and b"Traceback" not in qry.stderr, qry.stderr[-3000:]
    assert b"Slowest syscalls" in qry.stdout
    check_output(qry.stdout, colour)
    js = ks("report", "--db", settings.db_path, "--json", colour=colour)
    assert js.returncode == 1 and b"Traceback" not in js.stderr
    assert b"\x1b" not in js.stdout  # JSON escapes control characters
    orjson.loads(js.stdout)


def test_compose_stress_prints_collector_details_escaped(settings, rclient):
    """compose-stress shows each collector's failure detail, which any Redis client can
    write (even as a value that is not JSON)."""
    rclient.set("kernelsight:status:scraper", orjson.dumps(
        {"state": "failed", "detail": "\n".join(HOSTILE) + BIG}))
    rclient.set("kernelsight:status:io", orjson.dumps({"state": "failed",
                                                        "detail": ["\x1b[2J", "[/x]"]}))
    rclient.set("kernelsight:status:syscalls", b"\x1b[2J not json [/x]")
    rclient.set("kernelsight:status:sched", orjson.dumps(["\x1b[2J", "[/x]"]))
    for names, shown in (("scraper,io", b"scraper: FAILED"), ("syscalls,sched", b"sched is")):
        res = subprocess.run(
            [sys.executable, "-m", "kernelsight", "compose-stress", "--redis-url",
             settings.redis_url, "--collectors", names, "--start-timeout", "2"],
            capture_output=True, timeout=120, check=False)
        assert b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")[-3000:]
        assert res.returncode == 3, res.stderr.decode(errors="replace")[-3000:]  # timed out
        assert shown in res.stdout + res.stderr
        check_output(res.stdout, colour=False, literal=False)
        check_output(res.stderr, colour=False, literal=False)
