"""Prometheus /metrics for the pipeline (`--metrics-addr` on `run` and `ingest`)."""

from kernelsight.metrics.collector import PipelineCollector
from kernelsight.metrics.server import MetricsServer, parse_addr, resolve_addr

__all__ = ["MetricsServer", "PipelineCollector", "parse_addr", "resolve_addr"]
