"""Per-interval changes of a cumulative BPF map, and when its keys may be forgotten.

The tracers' kernel maps hold counters that only grow: user space never resets them, it reads
them once per interval and publishes the difference from the previous read, so nothing is
lost between a read and a reset. What is left is when a key (a process, a device) may be
deleted from the map. Deleting it while its owner can still write to it loses those writes
(the BPF program may hold a pointer to the element it is adding to), and deleting it before
its last increments were read loses them too. The one rule, for every tracer:

    A key is forgotten (its kernel entries deleted, its last value dropped here) when the
    last ``quiet_reads`` (2) reads showed no change in it AND its owner was gone at each of
    the checks that followed those reads.

The owner (a tgid, a block device) is gone at the check after read R-1, so it wrote nothing
after that check; read R therefore holds its final counts, and the final delta was published
from it. Read R showing no change as well guards against a reused pid: if a new process with
the same tgid wrote in between, the key changed and stays. (What is left: a reused pid that
first writes between read R and the delete, microseconds later, loses those writes; its
later writes count from zero.)

A key whose counters went backwards (deleted and re-created elsewhere) counts from zero, as
Prometheus treats a counter reset; a key that vanished from the map is forgotten at once.

Usage, once per interval::

    changes = tracker.diff(snapshot)      # {key: value} as read now
    publish(rows made from changes)       # change.before is None: count from zero
    for key, last in tracker.expire(alive):
        delete key's kernel entries
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Owner = Hashable

QUIET_READS = 2


@dataclass
class Change(Generic[K, V]):
    """A key whose counters moved since the last read. ``before`` is None when the key counts
    from zero (first seen, or its counters went backwards: a reset)."""

    key: K
    now: V
    before: V | None


@dataclass
class _Tracked(Generic[V]):
    value: V
    counters: Mapping[Hashable, int]
    quiet: int = 0  # consecutive reads without a change
    gone: int = 0  # consecutive checks, each after a quiet read, that found the owner gone


def is_reset(now: Mapping[Hashable, int], before: Mapping[Hashable, int]) -> bool:
    """True when any cumulative counter is lower than before (a missing one counts as 0)."""
    return any(now.get(name, 0) < v for name, v in before.items())


class CumulativeMap(Generic[K, V]):
    """Tracks one cumulative map across reads (see the module docstring for the rule).

    ``counters(value)`` gives the value's cumulative counters by name (histogram buckets
    included); everything else in the value (a per-epoch max, a comm) rides along.
    ``owner(key)`` names what must be gone before the key may be deleted (default: the key)."""

    def __init__(self, counters: Callable[[V], Mapping[Hashable, int]],
                 owner: Callable[[K], Owner] | None = None,
                 quiet_reads: int = QUIET_READS) -> None:
        if quiet_reads < 2:
            raise ValueError("quiet_reads < 2 could delete a key before its final read")
        self._counters = counters
        self._owner = owner or (lambda k: k)
        self.quiet_reads = quiet_reads
        self._keys: dict[K, _Tracked[V]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def last(self, key: K) -> V | None:
        """The value of ``key`` at the last read (None when not tracked)."""
        t = self._keys.get(key)
        return t.value if t else None

    def pending_deletion(self, key: K) -> bool:
        """True while ``key``'s owner has been seen gone but the key is not deleted yet."""
        t = self._keys.get(key)
        return bool(t and t.gone)

    def diff(self, snapshot: Mapping[K, V]) -> list[Change[K, V]]:
        """Record a new read of the whole map; return the keys that changed."""
        changes: list[Change[K, V]] = []
        for key in [k for k in self._keys if k not in snapshot]:
            del self._keys[key]  # deleted by someone else (or evicted): from zero if back
        for key, value in snapshot.items():
            counters = self._counters(value)
            t = self._keys.get(key)
            if t is None:
                self._keys[key] = _Tracked(value, counters)
                if any(counters.values()):
                    changes.append(Change(key, value, None))
                else:
                    self._keys[key].quiet = 1
                continue
            before = t.value
            if _same(counters, t.counters):
                t.value, t.quiet = value, t.quiet + 1
                continue
            reset = is_reset(counters, t.counters)
            t.value, t.counters, t.quiet, t.gone = value, counters, 0, 0
            changes.append(Change(key, value, None if reset else before))
        return changes

    def expire(self, alive: Callable[[Owner], bool]) -> list[tuple[K, V]]:
        """After the changes of the last diff() were published: the keys to delete from the
        kernel map now, with their last value (e.g. which histogram buckets they have).
        ``alive`` is asked only about owners of keys that did not change in the last read."""
        verdict: dict[Owner, bool] = {}
        out: list[tuple[K, V]] = []
        for key, t in list(self._keys.items()):
            if t.quiet == 0:
                continue
            owner = self._owner(key)
            if owner not in verdict:
                verdict[owner] = alive(owner)
            t.gone = 0 if verdict[owner] else t.gone + 1
            if t.quiet >= self.quiet_reads and t.gone >= self.quiet_reads:
                del self._keys[key]
                out.append((key, t.value))
        return out


def _same(a: Mapping[Hashable, int], b: Mapping[Hashable, int]) -> bool:
    """Equal counters, a missing one counting as 0."""
    return all(a.get(n, 0) == b.get(n, 0) for n in {*a, *b})


def max_for_epoch(v: Any, epoch: int) -> int:
    """The maximum a BPF program kept for ``epoch`` in map value ``v`` (bpf/ks_epochmax.h: two
    parity slots), 0 when nothing completed in it."""
    if epoch & 1:
        return int(v.max1) if int(v.epoch1) == epoch else 0
    return int(v.max0) if int(v.epoch0) == epoch else 0


def proc_alive(procfs: str) -> Callable[[Owner], bool]:
    """Owner check for tgid-keyed maps: the process still has its /proc entry (a zombie does;
    a reaped process does not, and can no longer run, fault or be scheduled)."""

    def alive(tgid: Owner) -> bool:
        return os.path.exists(os.path.join(procfs, str(tgid)))

    return alive


def delete_keys(table: object, keys: Iterable[object]) -> None:
    """Delete kernel map entries, ignoring ones already gone."""
    for k in keys:
        try:
            del table[k]  # type: ignore[attr-defined]
        except KeyError:
            pass
