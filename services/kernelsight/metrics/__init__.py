"""Prometheus /metrics for the pipeline (`--metrics-addr` on `run` and `ingest`)."""

from __future__ import annotations

from typing import Any

from kernelsight.metrics.addr import OFF, parse_addr, resolve_addr

__all__ = ["OFF", "MetricsServer", "PipelineCollector", "parse_addr", "resolve_addr"]


def __getattr__(name: str) -> Any:
    """The server and collector import prometheus_client: only when metrics are served."""
    if name == "MetricsServer":
        from kernelsight.metrics.server import MetricsServer

        return MetricsServer
    if name == "PipelineCollector":
        from kernelsight.metrics.collector import PipelineCollector

        return PipelineCollector
    raise AttributeError(name)
