"""The /proc scraper: memory, load, block devices, network interfaces, TCP states, TCP
retransmits, pressure stall information (PSI) and vmstat counters, every ``--interval`` seconds.

Reads: meminfo, loadavg, diskstats, net/dev, net/snmp, pressure/{cpu,memory,io} and vmstat
under ``--procfs`` (node_exporter's --path.procfs); TCP sockets by state through netlink
sock_diag (sockdiag.py: binary records, about 5x cheaper than net/tcp and net/tcp6, which are
read instead when --procfs is not a procfs mount, e.g. a test fixture, or netlink is refused).
Raw kernel values, no derived rates. Cost: about a dozen small file reads and two netlink dumps
per interval; the dumps grow with the number of sockets. Each part is independent: a file that
cannot be read or parsed is counted (dropped, reason ``read_error``/``parse_error``) and the
other parts go on. A kernel without PSI
(CONFIG_PSI off, or ``psi=0``) has no pressure directory: that is counted once, at start
(pressure_stats dropped, reason ``psi_unavailable``), logged once, and not read again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from kernelsight import procfs, sockdiag
from kernelsight.clock import now_ns
from kernelsight.collectors.base import Collector, Ticker
from kernelsight.exceptions import CollectorError

log = logging.getLogger(__name__)


class Scraper(Collector):
    name = "scraper"
    event_types = ("memory_metrics", "load_metrics", "block_stats", "network_interface_stats",
                   "tcp_stats", "tcp_retransmit_stats", "pressure_stats", "vmstat_stats")

    def start(self) -> None:
        self.root = Path(self.settings.procfs)
        if not (self.root / "meminfo").exists():
            raise CollectorError(f"scraper: {self.root} is not a procfs mount; pass --procfs")
        self.ticker = Ticker(self.settings.interval, first_in=0, wake=self.stopping)
        self._parts: list[tuple[str, Callable[[], list[dict]]]] = [
            ("memory_metrics", lambda: [procfs.parse_meminfo(self._read("meminfo"))]),
            ("load_metrics", lambda: [procfs.parse_loadavg(self._read("loadavg"))]),
            ("block_stats", lambda: procfs.parse_diskstats(
                self._read("diskstats"), self.settings.ignored_devices)),
            ("network_interface_stats", lambda: procfs.parse_net_dev(self._read("net/dev"))),
            ("tcp_stats", lambda: [self._tcp_states()]),
            ("tcp_retransmit_stats", lambda: [procfs.tcp_retransmits(
                procfs.parse_snmp(self._read("net/snmp")))]),
            ("vmstat_stats", lambda: [procfs.parse_vmstat(self._read("vmstat"))]),
        ]
        # One part per PSI resource, so one unreadable file costs only its own row.
        if (self.root / "pressure").is_dir():
            for res in procfs.PSI_RESOURCES:
                self._parts.append(("pressure_stats", self._pressure(res)))
        else:
            self.pub.lost("pressure_stats", "psi_unavailable", 1)
            log.warning("scraper: %s/pressure does not exist (kernel without PSI: "
                        "CONFIG_PSI off or booted with psi=0); pressure_stats is not collected",
                        self.root)

        # TCP states through netlink sock_diag when --procfs is a real procfs mount (its
        # net/ shows the reader's network namespace, as netlink does); files otherwise.
        self._sockdiag = procfs.is_proc_mount(self._mountinfo(), str(self.root.resolve()))

    def _mountinfo(self) -> str:
        try:
            return Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""

    def _tcp_states(self) -> dict:
        if self._sockdiag:
            try:
                return sockdiag.tcp_states()
            except sockdiag.Unavailable as e:
                self._sockdiag = False
                log.warning("scraper: %s; reading %s/net/tcp instead", e, self.root)
        return procfs.count_tcp_states(self._read("net/tcp"),
                                       self._read("net/tcp6", missing_ok=True))

    def _pressure(self, resource: str) -> Callable[[], list[dict]]:
        return lambda: [procfs.parse_pressure(self._read(f"pressure/{resource}"), resource)]

    def _read(self, rel: str, missing_ok: bool = False) -> str:
        try:
            return (self.root / rel).read_text()
        except FileNotFoundError:
            if missing_ok:  # no IPv6 in this kernel
                return ""
            raise

    def scrape_once(self) -> None:
        ts = now_ns()
        host = self.settings.host
        for event_type, fn in self._parts:
            try:
                rows = fn()
            except OSError as e:
                self.pub.lost(event_type, "read_error", 1)
                log.warning("scraper: %s: %s", event_type, e)
                continue
            except (procfs.ParseError, ValueError, IndexError) as e:
                self.pub.lost(event_type, "parse_error", 1)
                log.warning("scraper: %s: cannot parse: %s", event_type, e)
                continue
            for r in rows:
                r["timestamp"] = ts
                r["host"] = host
            self.pub.publish(event_type, rows)

    def poll(self) -> None:
        if self.ticker.wait():
            self.scrape_once()


COLLECTOR = Scraper
