"""A local Redis Cluster for tests, `make fleet` and `make bench`: N masters with one replica
each, from Debian's redis-server, on loopback TCP ports (a cluster gossips over TCP), one
generated password for clients and for replication.

Readiness is what a failover needs, not just ``cluster_state:ok``: every replica reports
``master_link_status:up``. A master killed before that (checked here: 4 s after creation) is
never replaced and the cluster stays failed."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kernelsight.exceptions import RedisUnavailable

NODE_TIMEOUT_MS = 2000
BUS_OFFSET = 10000  # the cluster bus listens on port + 10000, so port must be <= 55535


def cluster_port(taken: set[int]) -> int:
    """A port whose bus port (+10000) is free too, at the time of asking."""
    for _ in range(200):
        p = random.randrange(20000, 45000)
        if p in taken or p + BUS_OFFSET in taken:
            continue
        try:
            for q in (p, p + BUS_OFFSET):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
        except OSError:
            continue
        taken.update((p, p + BUS_OFFSET))
        return p
    raise RedisUnavailable("no free loopback port pair (port, port+10000) for a cluster node")


@dataclass
class Node:
    port: int
    dir: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    killed: bool = False  # by us, on purpose

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalRedisCluster:
    """``with LocalRedisCluster() as c: c.url`` (``redis+cluster://:PW@h:p,h:p,...``)."""

    def __init__(self, masters: int = 3, replicas: int = 1, password: str | None = None) -> None:
        self.exe = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        if not self.exe or not self.cli:
            raise RedisUnavailable("redis-server/redis-cli not found; apt-get install "
                                   "redis-server redis-tools")
        self.masters = masters
        self.replicas = replicas
        self.password = password or secrets.token_urlsafe(18)
        self.dir = Path(tempfile.mkdtemp(prefix="ks-rcluster-"))
        taken: set[int] = set()
        self.nodes = [Node(cluster_port(taken), self.dir / str(i))
                      for i in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        """Every node as a seed: a client starting while one is down still finds the rest."""
        return f"redis+cluster://:{self.password}@" + ",".join(n.addr for n in self.nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def _start_node(self, n: Node) -> None:
        n.dir.mkdir(parents=True, exist_ok=True)
        conf = [f"port {n.port}", "bind 127.0.0.1", "protected-mode yes", f"dir {n.dir}",
                "cluster-enabled yes", "cluster-config-file nodes.conf",
                f"cluster-node-timeout {NODE_TIMEOUT_MS}", f"requirepass {self.password}",
                f"masterauth {self.password}", "appendonly no", "save ''",
                "loglevel warning", f"logfile {n.dir / 'redis.log'}", "daemonize no",
                "maxmemory-policy noeviction"]
        n.proc = subprocess.Popen([self.exe, "-"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert n.proc.stdin
        n.proc.stdin.write(("\n".join(conf) + "\n").encode())
        n.proc.stdin.close()

    def cli_run(self, port: int, *args: str, timeout: float = 10) -> str:
        r = subprocess.run([self.cli, "-h", "127.0.0.1", "-p", str(port), *args],
                           check=False, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, REDISCLI_AUTH=self.password))
        return r.stdout

    def _info(self, port: int, what: str) -> dict[str, str]:
        try:
            argv = what.split() if what.startswith("cluster") else ["info", what]
            out = self.cli_run(port, *argv, timeout=3)
        except (subprocess.TimeoutExpired, OSError):
            return {}
        return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)

    def _wait(self, what: str, ok, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.proc and n.proc.poll() is not None and not n.killed:
                    log = n.dir / "redis.log"
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:] \
                        if log.exists() else []
                    raise RedisUnavailable(f"cluster node {n.addr} exited (code "
                                           f"{n.proc.returncode}): {tail}")
            if ok():
                return
            time.sleep(0.2)
        raise RedisUnavailable(f"redis cluster in {self.dir}: {what} not reached within "
                               f"{timeout:.0f}s")

    def start(self, timeout: float = 60) -> LocalRedisCluster:
        for n in self.nodes:
            self._start_node(n)
        self._wait("every node answering",
                   lambda: all(self.cli_run(n.port, "ping", timeout=3).strip() == "PONG"
                               for n in self.nodes), timeout)
        r = subprocess.run([self.cli, "--cluster", "create", *(n.addr for n in self.nodes),
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=False, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, REDISCLI_AUTH=self.password))
        if r.returncode != 0:
            raise RedisUnavailable(f"redis-cli --cluster create failed: "
                                   f"{(r.stdout + r.stderr).strip().splitlines()[-1:]}")
        self.wait_healthy(timeout)
        return self

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.proc and n.proc.poll() is None]

    def roles(self) -> dict[int, str]:
        return {n.port: self._info(n.port, "replication").get("role", "?") for n in self.live()}

    def wait_healthy(self, timeout: float = 60) -> None:
        """Every live node says cluster_state:ok, every replica's link to its master is up, and
        there are as many masters as slots ranges (no slot without a master)."""
        def healthy() -> bool:
            live = self.live()
            if any(self._info(n.port, "cluster info").get("cluster_state") != "ok" for n in live):
                return False
            reps = [self._info(n.port, "replication") for n in live]
            masters = sum(1 for r in reps if r.get("role") == "master")
            return masters == self.masters and all(
                r.get("master_link_status") == "up" for r in reps if r.get("role") == "slave")
        self._wait("cluster_state:ok with every replica linked", healthy, timeout)

    def master_for(self, key: str) -> Node:
        slot = int(self.cli_run(self.nodes[0].port, "cluster", "keyslot", key).strip())
        for n in self.live():
            if self._info(n.port, "replication").get("role") != "master":
                continue
            out = self.cli_run(n.port, "cluster", "nodes")
            for line in out.splitlines():
                parts = line.split()
                if "myself" in parts[2]:
                    for rng in parts[8:]:
                        lo, _, hi = rng.partition("-")
                        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                            return n
        raise RedisUnavailable(f"no live master serves slot {slot} ({key!r})")

    def replica_of(self, master: Node) -> Node:
        """The live replica that replicates ``master`` (CLUSTER NODES: "slave <master id>")."""
        mid = self.cli_run(master.port, "cluster", "myid").strip()
        for line in self.cli_run(master.port, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) > 3 and "slave" in parts[2] and parts[3] == mid:
                port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                node = next((n for n in self.live() if n.port == port), None)
                if node is not None:
                    return node
        raise RedisUnavailable(f"no live replica of {master.addr}")

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        assert node.proc
        node.killed = True
        node.proc.send_signal(sig)
        node.proc.wait(10)

    def wait_failover(self, killed: Node, timeout: float = 30) -> None:
        """A replica of the killed master has taken over its slots: as many live masters as
        the cluster was built with, and cluster_state ok on every live node. (Right after the
        kill the others still say ok: they have not yet marked it failed.)"""
        def done() -> bool:
            live = self.live()
            masters = sum(1 for n in live
                          if self._info(n.port, "replication").get("role") == "master")
            return masters == self.masters and all(
                self._info(n.port, "cluster info").get("cluster_state") == "ok" for n in live)
        self._wait(f"failover of {killed.addr}", done, timeout)

    def restart(self, node: Node) -> None:
        """Start a killed node again: it rejoins as a replica of its promoted replica."""
        node.killed = False
        self._start_node(node)

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.terminate()
        for n in self.nodes:
            if n.proc:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(10)
                if n.proc.poll() is None:
                    n.proc.kill()
                    n.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedisCluster:  # noqa: PYI034
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
