"""KernelSight: kernel telemetry from /proc and eBPF, through Redis streams, into SQLite."""

__version__ = "0.1.0"
