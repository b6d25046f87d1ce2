"""`kernelsight loadgen`: realistic synthetic events of every type through the real pipeline,
at a fixed rate, for soak tests and benchmarks. `kernelsight soak` (soak.py) runs it against a
private Redis and a real ingester and checks conservation and flat memory."""

from __future__ import annotations

import random
import socket
import threading
import time

import click
import orjson

from kernelsight import schema
from kernelsight.config import Settings
from kernelsight.streams import Publisher

SYSCALLS = ("read", "write", "futex", "epoll_wait", "fsync", "openat", "nanosleep", "poll")
COMMS = ("postgres", "nginx", "python3", "java", "redis-server", "kworker/0:1", "dd", "find")

# Relative frequencies, roughly what a busy host produces.
MIX = {"syscall_events": 20, "page_fault_events": 30, "page_fault_totals": 5,
       "io_latency_stats": 2, "sched_events": 15, "memory_metrics": 1, "load_metrics": 1,
       "block_stats": 4, "network_interface_stats": 4, "tcp_stats": 1,
       "tcp_retransmit_stats": 1}


def make_event(et: schema.EventType, rng: random.Random, host: str, ts: int) -> dict:
    """One valid event of type ``et`` with plausible values (and the full value ranges where
    they matter: 64-bit addresses, negative return values)."""
    row: dict = {"timestamp": ts, "host": host}
    for c in et.columns:
        n = c.name
        if c.kind == "str":
            if c.choices:
                row[n] = rng.choice(c.choices)
            elif n == "comm":
                row[n] = rng.choice(COMMS)
            elif n == "syscall_name":
                row[n] = rng.choice(SYSCALLS)
            else:
                row[n] = rng.choice(("vda", "nvme0n1", "eth0", "lo", "sda"))
        elif c.kind == "float":
            row[n] = round(rng.lognormvariate(4, 1.5), 3)
        elif n in ("address", "arg0"):
            row[n] = rng.randint(schema.INT64_MIN, schema.INT64_MAX)
        elif n == "ret_value":
            row[n] = rng.choice((0, 1, 4096, -4, -11, -110))
        elif c.hi == 1:
            row[n] = rng.randint(0, 1)
        elif n.endswith("_ns"):
            row[n] = int(rng.lognormvariate(14, 2))
        else:
            row[n] = rng.randint(0, 4_000_000)
    return row


def pool(host: str, seed: int = 1, size: int = 512,
         tables: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """A pool of pre-built events in the right mix (timestamps set at publish time), of
    ``tables`` only when given."""
    rng = random.Random(seed)
    names = [n for n, w in MIX.items() for _ in range(w) if not tables or n in tables]
    return [(n, make_event(schema.BY_NAME[n], rng, host, 0))
            for n in (rng.choice(names) for _ in range(size))]


def generate(settings: Settings, rate: float, duration: float,
             stop: threading.Event | None = None, tables: tuple[str, ...] = ()) -> Publisher:
    """Publish ``rate`` events/s for ``duration`` s, paced in 10 ms slices."""
    pub = Publisher(settings, "loadgen")
    pub.status(schema.STARTED)
    events = pool(settings.host, tables=tables)
    i = 0
    start = time.monotonic()
    sent = 0
    while not (stop and stop.is_set()):
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= duration:
            break
        due = int(rate * elapsed) - sent
        if due > 0:
            ts = time.time_ns()
            by_type: dict[str, list[dict]] = {}
            for _ in range(due):
                name, row = events[i % len(events)]
                i += 1
                by_type.setdefault(name, []).append({**row, "timestamp": ts})
            for name, rows in by_type.items():
                pub.publish(name, rows)
            sent += due
        pub.flush()
        time.sleep(0.01)
    pub.close()
    return pub


@click.command("loadgen", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rate", type=click.FloatRange(1, 10_000_000), required=True,
              help="Events per second.")
@click.option("--duration", type=click.FloatRange(0.1, 7 * 86400), required=True,
              help="Seconds.")
@click.option("--redis-url", envvar="KS_REDIS_URL", show_envvar=True, required=True)
@click.option("--host", envvar="KS_HOST", default=None, help="Host name in the events.")
@click.option("--tables", "table_list", envvar="KS_LOADGEN_TABLES", show_envvar=True,
              default="", help="Comma list of event tables to publish [default: all of "
              f"{', '.join(MIX)}].")
def command(rate: float, duration: float, redis_url: str, host: str | None,
            table_list: str) -> None:
    """Publish realistic events of every type at RATE/s (for soak tests and benchmarks).

    Beside a real collector of the same --host, give it --tables without that collector's:
    each of a host's streams then has one producer, as in a real deployment.

    \b
    Examples:
      KS_REDIS_URL=redis://:pw@127.0.0.1:6379/0 kernelsight loadgen --rate 10000 --duration 60
      kernelsight loadgen --rate 1000 --duration 60 --tables syscall_events,sched_events
    """
    tables = tuple(t.strip() for t in table_list.split(",") if t.strip())
    bad = [t for t in tables if t not in MIX]
    if bad:
        raise click.UsageError(f"--tables: {bad[0]!r} is not a loadgen table; choose from "
                               f"{', '.join(MIX)}")
    s = Settings().with_(redis_url=redis_url, host=host or socket.gethostname())
    pub = generate(s, rate, duration, tables=tables)
    produced = sum(v for (et, m, _), v in pub.counters.items() if m == schema.PRODUCED)
    dropped = sum(v for (et, m, _), v in pub.counters.items() if m == schema.DROPPED)
    click.echo(orjson.dumps({"produced": produced, "dropped": dropped,
                             "rate_achieved": produced / duration}).decode())
