"""Serving /metrics on ``--metrics-addr HOST:PORT`` from a private CollectorRegistry."""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from kernelsight.config import Settings
from kernelsight.exceptions import ConfigError
from kernelsight.metrics.addr import parse_addr
from kernelsight.metrics.collector import PipelineCollector
from kernelsight.metrics.names import SPECS

log = logging.getLogger(__name__)

# Batch commits take ~1-50 ms at the default 1000 entries; the top buckets catch lock waits
# and disk stalls (a locked database retries for up to LOCK_RETRIES x LOCK_RETRY_S).
BATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)


class MetricsServer:
    """The registry (pipeline collector + this process's batch histogram) and its HTTP server."""

    def __init__(self, settings: Settings) -> None:
        # No `<histogram>_created` gauge: a process start time per series that nothing here
        # reads (and that every restart moves).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.pipeline = PipelineCollector(settings)
        self.registry.register(self.pipeline)
        spec = SPECS["kernelsight_ingest_batch_duration_seconds"]
        self.batch_seconds = Histogram(spec.name, spec.help, registry=self.registry,
                                       buckets=BATCH_BUCKETS_S)
        self.httpd = None
        self.addr: tuple[str, int] | None = None

    def start(self, addr: str) -> MetricsServer:
        parsed = parse_addr(addr)
        if parsed is None:
            return self
        host, port = parsed
        try:
            self.httpd, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {addr} ({e.strerror or e}); pass "
                              "--metrics-addr HOST:PORT with a free port, or 'off'") from None
        self.addr = (host, self.httpd.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.addr[1])
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
