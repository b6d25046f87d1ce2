"""The /proc scraper: memory, load, block devices, network interfaces, TCP states and TCP
retransmits, every ``--interval`` seconds.

Reads: meminfo, loadavg, diskstats, net/dev, net/tcp, net/tcp6, net/snmp under ``--procfs``
(node_exporter's --path.procfs). Raw kernel values, no derived rates. Cost: about a dozen
small file reads per interval; /proc/net/tcp grows with the number of sockets. Each part is
independent: a file that cannot be read or parsed is counted (dropped, reason
``read_error``/``parse_error``) and the other parts go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from kernelsight import procfs
from kernelsight.clock import now_ns
from kernelsight.collectors.base import Collector, Ticker
from kernelsight.exceptions import CollectorError

log = logging.getLogger(__name__)


class Scraper(Collector):
    name = "scraper"
    event_types = ("memory_metrics", "load_metrics", "block_stats", "network_interface_stats",
                   "tcp_stats", "tcp_retransmit_stats")

    def start(self) -> None:
        self.root = Path(self.settings.procfs)
        if not (self.root / "meminfo").exists():
            raise CollectorError(f"scraper: {self.root} is not a procfs mount; pass --procfs")
        self.ticker = Ticker(self.settings.interval, first_in=0)
        self._parts: list[tuple[str, Callable[[], list[dict]]]] = [
            ("memory_metrics", lambda: [procfs.parse_meminfo(self._read("meminfo"))]),
            ("load_metrics", lambda: [procfs.parse_loadavg(self._read("loadavg"))]),
            ("block_stats", lambda: procfs.parse_diskstats(
                self._read("diskstats"), self.settings.ignored_devices)),
            ("network_interface_stats", lambda: procfs.parse_net_dev(self._read("net/dev"))),
            ("tcp_stats", lambda: [procfs.count_tcp_states(
                self._read("net/tcp"), self._read("net/tcp6", missing_ok=True))]),
            ("tcp_retransmit_stats", lambda: [procfs.tcp_retransmits(
                procfs.parse_snmp(self._read("net/snmp")))]),
        ]

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
