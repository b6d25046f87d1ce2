"""The tiny interface every collector implements (node_exporter style)."""

from __future__ import annotations

from typing import ClassVar

from kernelsight.config import Settings
from kernelsight.streams import Publisher


class Collector:
    """``name`` is the module name, the CLI name and the event ``source``.

    Lifecycle: ``start()`` (raise CollectorError with a one-line reason if this host cannot
    run it), then ``poll()`` repeatedly (block at most ~0.1-0.5 s, publish what is due), then
    ``stop()`` (publish the last partial interval and count anything lost)."""

    name: ClassVar[str] = ""
    event_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self.settings = settings
        self.pub = publisher

    def start(self) -> None:
        pass

    def poll(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass
