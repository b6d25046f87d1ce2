"""`kernelsight fleet` / `make fleet`: the many-hosts setup, proven end to end on loopback.

Brings up a 6-node Redis Cluster (3 masters, 3 replicas; redis_cluster.LocalRedisCluster), a
PostgreSQL (pg_server.TemporaryPostgres, initdb + SCRAM password), N simulated hosts (each its
own ``KS_HOST``: `kernelsight loadgen` at a fixed rate plus the real /proc scraper, as
processes) and 2 `kernelsight ingest` processes sharing the consumer groups. Half-way through
it SIGKILLs the Redis master that serves the first host's streams (only once every replica is
linked: a master killed earlier is never replaced) and times the failover. At the end the
producers stop, the ingesters drain, and the store is checked per host and event type:
produced (the producers' own accounting) = stored + dropped + dead letters, and no
(host, stream_id) stored twice. Exit 0 only when all of that holds; otherwise one line says why.

Everything is a real process on loopback ports chosen free; all are ours and are stopped by
pid at the end. (Network namespaces per host would add nothing the per-host ``KS_HOST`` and
hash-tagged stream keys do not already separate, so the hosts share the loopback.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import orjson

from kernelsight import schema
from kernelsight.exceptions import ConfigError, KernelSightError
from kernelsight.loadgen import MIX

INGESTERS = 2
INGEST_HOST = "fleet-ingest"  # the ingesters' own KS_HOST (their accounting rows)
DRAIN_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


def host_names(n: int) -> list[str]:
    return [f"fleet-{chr(ord('a') + i)}" if n <= 26 else f"fleet-{i + 1}" for i in range(n)]


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 3) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])


@dataclass
class Line:
    """One (host, event table) of the fleet report."""

    host: str
    table: str
    produced: int = 0
    stored: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dead: int = 0

    @property
    def balance(self) -> int:
        """produced - stored - dropped - dead letters: 0 when conserved; > 0 lost silently,
        < 0 stored beyond what was produced (a duplicate under a new id)."""
        return self.produced - self.stored - sum(self.dropped.values()) - self.dead


@dataclass
class FleetResult:
    hosts: list[str]
    duration_s: float
    rate: float
    lines: list[Line] = field(default_factory=list)
    duplicate_keys: dict[str, int] = field(default_factory=dict)  # table -> (host, id) stored >1
    redeliveries: int = 0  # entries the ingesters received again and skipped (ON CONFLICT)
    by_source: dict[str, int] = field(default_factory=dict)  # "host/source" -> produced
    killed: str = ""
    killed_hosts: list[str] = field(default_factory=list)  # whose streams the killed master had
    killed_at_s: float | None = None
    failover_s: float | None = None
    exits: dict[str, int | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # set up by run_fleet, not by verdict

    def verdict(self) -> list[str]:
        """What failed, one line each; empty: success."""
        bad = list(self.problems)
        if not self.killed or self.failover_s is None:
            bad.append("no Redis master was killed and replaced during the run")
        for name, rc in sorted(self.exits.items()):
            if rc != 0:
                bad.append(f"{name} exited with {rc}")
        off = [ln for ln in self.lines if ln.balance]
        if off:
            bad.append("not conserved: " + ", ".join(
                f"{ln.host}/{ln.table} {ln.balance:+,}" for ln in off))
        if any(self.duplicate_keys.values()):
            bad.append("duplicates stored: " + ", ".join(
                f"{t} {n:,}" for t, n in self.duplicate_keys.items() if n))
        for h in self.hosts:
            if not any(ln.stored for ln in self.lines if ln.host == h):
                bad.append(f"host {h}: nothing stored")
        return bad

    def to_json(self) -> dict:
        return {"hosts": self.hosts, "duration_s": self.duration_s, "rate_per_host": self.rate,
                "killed_master": self.killed, "killed_hosts": self.killed_hosts,
                "killed_at_s": self.killed_at_s,
                "failover_s": self.failover_s, "exits": self.exits,
                "redeliveries_skipped": self.redeliveries, "produced_by_source": self.by_source,
                "duplicate_keys": self.duplicate_keys,
                "lines": [{"host": ln.host, "table": ln.table, "produced": ln.produced,
                           "stored": ln.stored, "dropped": ln.dropped,
                           "dead_letters": ln.dead, "balance": ln.balance}
                          for ln in self.lines],
                "failures": self.verdict()}


class Fleet:
    """The processes of one fleet run; ``close()`` stops every one of them (by pid)."""

    def __init__(self, log_dir: Path, echo: Callable[[str], None]) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen([sys.executable, "-m", "kernelsight", *argv], env=env,
                                 stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
        c = Child(name, p, log)
        self.children.append(c)
        return c

    def stop(self, children: list[Child], timeout: float, sig: int = signal.SIGTERM) -> None:
        for c in children:
            if c.popen.poll() is None:
                c.popen.send_signal(sig)
        end = time.monotonic() + timeout
        for c in children:
            try:
                c.popen.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"{c.name}: pid {c.popen.pid} did not exit in {timeout:.0f} s; "
                          "killing it")
                c.popen.kill()
                c.popen.wait()

    def close(self) -> None:
        self.stop([c for c in self.children if c.popen.poll() is None], 10)


def child_env(redis_url: str, db_url: str, host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
    env.update(KS_REDIS_URL=redis_url, KS_DB_PATH=db_url, KS_HOST=host, KS_METRICS_ADDR="off",
               KS_LOG_LEVEL=os.environ.get("KS_LOG_LEVEL", "info"))
    return env


def wait_schema(db_url: str, ing: Child, timeout: float) -> None:
    """The first ingester has created the schema (so the second does not race it)."""
    from sqlalchemy import create_engine, inspect

    eng = create_engine(db_url)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if ing.popen.poll() is not None:
                raise KernelSightError(f"{ing.name} exited with {ing.popen.returncode} before "
                                       f"creating the schema: {ing.tail()}")
            with contextlib.suppress(Exception):
                if inspect(eng).has_table("schema_meta"):
                    return
            time.sleep(0.3)
    finally:
        eng.dispose()
    raise KernelSightError(f"{ing.name} did not create the schema within {timeout:.0f} s "
                           f"(log {ing.log})")


def collect_result(res: FleetResult, db_url: str) -> None:
    """Per host and table, from the durable record only (dialect-neutral SQL)."""
    from sqlalchemy import bindparam, create_engine, text

    hosts = res.hosts
    eng = create_engine(db_url)
    lines: dict[tuple[str, str], Line] = {}

    def line(h: str, t: str) -> Line:
        return lines.setdefault((h, t), Line(h, t))

    acct = text("""
        SELECT host, source, event_type, metric, reason, SUM(v) FROM (
          SELECT host, source, instance, event_type, metric, reason, MAX(value) AS v
          FROM pipeline_accounting WHERE metric IN ('produced', 'dropped', 'duplicates')
          GROUP BY host, source, instance, event_type, metric, reason) per_instance
        GROUP BY host, source, event_type, metric, reason""")
    try:
        with eng.connect() as c:
            for h, src, et, metric, reason, raw in c.execute(acct):
                v = int(raw or 0)
                if metric == "duplicates":
                    res.redeliveries += v
                elif h not in hosts or et not in schema.TABLES:
                    continue
                elif metric == schema.PRODUCED:
                    line(h, et).produced += v
                    res.by_source[f"{h}/{src}"] = res.by_source.get(f"{h}/{src}", 0) + v
                elif v:
                    d = line(h, et).dropped
                    d[reason] = d.get(reason, 0) + v
            for et in schema.EVENT_TYPES:
                q = text(f"SELECT host, COUNT(*) FROM {et.name} WHERE host IN :hosts "
                         "GROUP BY host").bindparams(bindparam("hosts", expanding=True))
                for h, n in c.execute(q, {"hosts": hosts}):
                    line(h, et.name).stored = int(n)
                dup = text(f"SELECT COUNT(*) FROM (SELECT host, stream_id FROM {et.name} "
                           "GROUP BY host, stream_id HAVING COUNT(*) > 1) d")
                res.duplicate_keys[et.name] = int(c.execute(dup).scalar() or 0)
            for h in hosts:
                q = text("SELECT event_type, COUNT(*) FROM dead_letters WHERE stream LIKE :pat "
                         "GROUP BY event_type")
                for et, n in c.execute(q, {"pat": f"%{{{h}}}%"}):
                    if et in schema.TABLES:
                        line(h, et).dead += int(n)
    finally:
        eng.dispose()
    res.lines = sorted((ln for ln in lines.values() if ln.produced or ln.stored or ln.dropped
                        or ln.dead), key=lambda ln: (ln.host, ln.table))


def run_fleet(duration: float, rate: float, n_hosts: int, log_dir: Path,
              echo: Callable[[str], None] = print, kill_at: float = 0.5,
              scraper: bool = True, db_url: str | None = None) -> FleetResult:
    """The whole run (see the module docstring). Raises KernelSightError when the fleet
    cannot even be brought up; everything after that ends in the result's verdict.
    ``db_url``: an empty store to use instead of a temporary PostgreSQL (a SQLite path too)."""
    from kernelsight.pg_server import TemporaryPostgres
    from kernelsight.redis_cluster import LocalRedisCluster

    hosts = host_names(n_hosts)
    res = FleetResult(hosts, duration, rate)
    t_all = time.monotonic()
    with LocalRedisCluster() as cluster, (
            contextlib.nullcontext() if db_url else TemporaryPostgres()) as pg:
        echo(f"redis cluster: {len(cluster.nodes)} nodes on 127.0.0.1 ports "
             f"{', '.join(str(n.port) for n in cluster.nodes)} (every replica linked)")
        if pg is not None:
            db_url = pg.url
            echo(f"postgresql: 127.0.0.1:{pg.port} (data {pg.dir})")
        assert db_url
        sa_url = db_url if "://" in db_url else f"sqlite:///{Path(db_url).resolve()}"
        fleet = Fleet(log_dir, echo)
        try:
            ingesters = []
            for i in range(INGESTERS):
                ing = fleet.spawn(f"ingest-{i + 1}", ["ingest", "--workers", "1", "--consumer",
                                                      f"fleet-ingest-{i + 1}"],
                                  child_env(cluster.url, db_url, INGEST_HOST))
                ingesters.append(ing)
                if i == 0:
                    wait_schema(sa_url, ing, 120)
            echo(f"ingest: {INGESTERS} processes sharing the consumer groups (pids "
                 f"{', '.join(str(c.popen.pid) for c in ingesters)})")
            producers = []
            for h in hosts:
                env = child_env(cluster.url, db_url, h)
                # Beside the host's scraper, loadgen publishes the tracers' tables only: one
                # producer per stream, as on a real host (two producers of one stream can
                # re-add each other's ids after a failover: see README "Scaling out").
                only = (["--tables", ",".join(t for t in MIX
                                              if schema.BY_NAME[t].source != "scraper")]
                        if scraper else [])
                producers.append(fleet.spawn(f"{h}-loadgen", ["loadgen", "--rate", str(rate),
                                                              "--duration", str(duration),
                                                              "--host", h, *only], env))
                if scraper:
                    producers.append(fleet.spawn(f"{h}-scraper", ["collect"], env))
            echo(f"hosts: {', '.join(hosts)} (loadgen {rate:g} events/s each"
                 + (" + the /proc scraper" if scraper else "") + f") for {duration:g} s")
            t0 = time.monotonic()
            _kill_master(cluster, hosts[0], t0 + duration * kill_at, res, echo, t0)
            for c in producers:
                if c.name.endswith("-loadgen"):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        c.popen.wait(max(0.1, t0 + duration + STOP_TIMEOUT_S - time.monotonic()))
            fleet.stop(producers, STOP_TIMEOUT_S)  # the scrapers flush their last accounting
            for c in producers:
                res.exits[c.name] = c.popen.returncode
            echo(f"producers stopped after {time.monotonic() - t0:.0f} s; draining")
            t_drain = time.monotonic()
            fleet.stop(ingesters, DRAIN_TIMEOUT_S)
            for c in ingesters:
                res.exits[c.name] = c.popen.returncode
                if c.popen.returncode != 0:
                    res.problems.append(f"{c.name}: {c.tail()}")
            echo(f"drained in {time.monotonic() - t_drain:.1f} s")
        finally:
            fleet.close()
        collect_result(res, sa_url)
    echo(f"fleet run took {time.monotonic() - t_all:.0f} s in all (logs in {log_dir})")
    return res


def _kill_master(cluster, host: str, at: float, res: FleetResult,  # type: ignore[no-untyped-def]
                 echo: Callable[[str], None], t0: float) -> None:
    """At ``at`` (monotonic), once every replica is linked, SIGKILL the master serving
    ``host``'s hash tag and time until a replica has taken its slots over."""
    time.sleep(max(0.0, at - time.monotonic()))
    # Every replica's link up (else no replica is promoted), within a fifth of the run: a
    # kill much later would no longer be "in the middle" (and could hit the producers' exit).
    wait = max(10.0, res.duration_s / 5)
    try:
        cluster.wait_healthy(wait)
        victim = cluster.master_for("{" + host + "}")
        res.killed_hosts = [h for h in res.hosts
                            if h == host or cluster.master_for("{" + h + "}") is victim]
    except KernelSightError as e:
        res.problems.append(f"before the kill: {e}")
        return
    k0 = time.monotonic()
    cluster.kill(victim, signal.SIGKILL)
    res.killed = victim.addr
    res.killed_at_s = round(k0 - t0, 1)
    echo(f"SIGKILL redis master {victim.addr} (serves the slots of "
         f"{', '.join(res.killed_hosts)}) at {k0 - t0:.0f} s")
    try:
        cluster.wait_failover(victim, 60)
    except KernelSightError as e:
        res.problems.append(f"failover: {e}")
        return
    res.failover_s = round(time.monotonic() - k0, 1)
    echo(f"failover: a replica took over in {res.failover_s} s")


def format_report(res: FleetResult) -> list[str]:
    out = [f"{'host':<10} {'table':<26} {'produced':>10} {'stored':>10} {'dropped':>8} "
           f"{'dead':>5} {'balance':>8}"]
    for ln in res.lines:
        drop = sum(ln.dropped.values())
        out.append(f"{ln.host:<10} {ln.table:<26} {ln.produced:>10,} {ln.stored:>10,} "
                   f"{drop:>8,} {ln.dead:>5,} {ln.balance:>+8,}"
                   + (f"  ({', '.join(f'{k} {v:,}' for k, v in ln.dropped.items())})"
                      if drop else ""))
    for h in res.hosts:
        mine = [ln for ln in res.lines if ln.host == h]
        out.append(f"{h}: produced {sum(ln.produced for ln in mine):,}, stored "
                   f"{sum(ln.stored for ln in mine):,}, dropped "
                   f"{sum(sum(ln.dropped.values()) for ln in mine):,}, dead letters "
                   f"{sum(ln.dead for ln in mine):,}")
    dups = sum(res.duplicate_keys.values())
    out.append(f"duplicates stored: {dups} ((host, stream_id) keys stored more than once); "
               f"re-deliveries skipped by the store: {res.redeliveries:,}")
    out.append(f"failover: master {res.killed or '-'} (streams of "
               f"{', '.join(res.killed_hosts) or '-'}) SIGKILLed at {res.killed_at_s} s, replica "
               f"promoted in {res.failover_s} s")
    return out


@click.command("fleet", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--duration", type=click.FloatRange(10, 86400), default=120, show_default=True,
              envvar="KS_FLEET_DURATION", show_envvar=True,
              help="Seconds the hosts produce; the master is killed half-way.")
@click.option("--rate", type=click.FloatRange(1, 200_000), default=1000, show_default=True,
              envvar="KS_FLEET_RATE", show_envvar=True, help="loadgen events/s per host.")
@click.option("--hosts", "n_hosts", type=click.IntRange(1, 26), default=3, show_default=True,
              envvar="KS_FLEET_HOSTS", show_envvar=True, help="Simulated hosts.")
@click.option("--scraper/--no-scraper", default=True, envvar="KS_FLEET_SCRAPER",
              show_envvar=True, help="Run the real /proc scraper on each host too.")
@click.option("--log-dir", default="logs/fleet", show_default=True, envvar="KS_LOG_DIR",
              show_envvar=True, type=click.Path(file_okay=False))
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              envvar="KS_FLEET_JSON", show_envvar=True, help="Also write the result here.")
def command(duration: float, rate: float, n_hosts: int, scraper: bool, log_dir: str,
            json_out: str | None) -> None:
    """A local fleet on loopback: 6-node Redis Cluster, PostgreSQL, simulated hosts and 2
    ingesters; one Redis master SIGKILLed mid-run; per host and type produced/stored/dropped.
    Exit 0 only if every host and type is conserved with no duplicates (root: PostgreSQL runs
    as the postgres user).

    \b
    Examples:
      sudo make fleet FLEET_DURATION=300
      kernelsight fleet --duration 60 --rate 2000 --hosts 3
    """
    if os.geteuid() != 0:
        raise ConfigError("kernelsight fleet runs as root (initdb runs as the postgres user): "
                          "sudo make fleet")
    res = run_fleet(duration, rate, n_hosts, Path(log_dir), echo=click.echo, scraper=scraper)
    for ln in format_report(res):
        click.echo(ln)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_bytes(orjson.dumps(res.to_json(), option=orjson.OPT_INDENT_2))
    bad = res.verdict()
    if bad:
        click.echo(f"fleet: FAIL: {bad[0]}" + (f" (and {len(bad) - 1} more: "
                                               + "; ".join(bad[1:]) + ")" if bad[1:] else ""))
        sys.exit(1)
    total = sum(ln.produced for ln in res.lines)
    click.echo(f"fleet: SUCCESS: {len(res.hosts)} hosts, {total:,} events produced, every host "
               f"and type conserved, 0 duplicates, failover {res.failover_s} s")
