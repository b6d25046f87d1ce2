"""The shared cumulative-map rule on synthetic map snapshots: deltas, forgetting dead keys only
after their final delta was published, pid reuse, counter resets."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from kernelsight.collectors.cumulative import CumulativeMap, proc_alive


def counters(v: dict[str, int]) -> dict[str, int]:
    return v


def deltas(m: CumulativeMap, snap: dict) -> dict:
    """What a tracer would publish for this read: key -> per-counter difference."""
    out = {}
    for ch in m.diff(snap):
        before = ch.before or {}
        out[ch.key] = {n: v - before.get(n, 0) for n, v in ch.now.items()}
    return out


def alive_set(live: set) -> Callable[[object], bool]:
    return lambda owner: owner in live


def test_growth_gives_differences_and_quiet_keys_nothing() -> None:
    m: CumulativeMap = CumulativeMap(counters)
    assert deltas(m, {1: {"n": 5}}) == {1: {"n": 5}}  # new key: from zero
    assert deltas(m, {1: {"n": 8}}) == {1: {"n": 3}}
    assert deltas(m, {1: {"n": 8}}) == {}
    assert deltas(m, {1: {"n": 8, "b3": 2}}) == {1: {"n": 0, "b3": 2}}  # a new bucket
    assert m.last(1) == {"n": 8, "b3": 2}


def test_new_key_with_zero_counters_is_not_a_change() -> None:
    m: CumulativeMap = CumulativeMap(counters)
    assert deltas(m, {7: {"n": 0}}) == {}
    assert deltas(m, {7: {"n": 2}}) == {7: {"n": 2}}


def test_dead_key_is_kept_until_two_quiet_reads_and_two_gone_checks() -> None:
    m: CumulativeMap = CumulativeMap(counters)
    live = {1, 2}
    deltas(m, {1: {"n": 1}, 2: {"n": 1}})
    assert m.expire(alive_set(live)) == []
    # Process 1 exits after this read took its counts; its last increments land after.
    assert deltas(m, {1: {"n": 4}, 2: {"n": 1}}) == {1: {"n": 3}}
    live.discard(1)
    assert m.expire(alive_set(live)) == []  # changed in this read: keep
    # The next read holds its final counts: published, not forgotten.
    assert deltas(m, {1: {"n": 6}, 2: {"n": 1}}) == {1: {"n": 2}}
    assert m.expire(alive_set(live)) == []
    assert deltas(m, {1: {"n": 6}, 2: {"n": 1}}) == {}
    assert m.expire(alive_set(live)) == [] and m.pending_deletion(1)
    assert deltas(m, {1: {"n": 6}, 2: {"n": 1}}) == {}
    assert m.expire(alive_set(live)) == [(1, {"n": 6})]
    assert 1 not in m and 2 in m  # a live quiet key is never forgotten
    for _ in range(5):
        deltas(m, {2: {"n": 1}})
        assert m.expire(alive_set(live)) == []


def test_owner_that_dies_after_a_quiet_read_is_read_again() -> None:
    """The defect this rule fixes: a process quiet for a while takes faults after a read and
    exits before the check. Deleting at that check would lose those faults."""
    m: CumulativeMap = CumulativeMap(counters)
    deltas(m, {1: {"n": 10}})
    for _ in range(3):
        assert deltas(m, {1: {"n": 10}}) == {}
        assert m.expire(alive_set({1})) == []
    # It wakes, faults 5 times, exits and is reaped - all between a read and the check.
    assert deltas(m, {1: {"n": 10}}) == {}
    assert m.expire(alive_set(set())) == []  # gone once: not yet
    assert deltas(m, {1: {"n": 15}}) == {1: {"n": 5}}  # the final 5 are published
    assert m.expire(alive_set(set())) == []
    deltas(m, {1: {"n": 15}})
    assert m.expire(alive_set(set())) == []
    deltas(m, {1: {"n": 15}})
    assert m.expire(alive_set(set())) == [(1, {"n": 15})]


def test_reused_pid_keeps_the_key_and_counts_on() -> None:
    m: CumulativeMap = CumulativeMap(counters)
    deltas(m, {1: {"n": 4}})
    deltas(m, {1: {"n": 4}})
    assert m.expire(alive_set(set())) == []  # gone once
    # A new process gets pid 1 and adds to the same kernel key before the next read.
    assert deltas(m, {1: {"n": 9}}) == {1: {"n": 5}}
    assert m.expire(alive_set({1})) == [] and not m.pending_deletion(1)
    for _ in range(4):
        deltas(m, {1: {"n": 9}})
        assert m.expire(alive_set({1})) == []
    assert m.last(1) == {"n": 9}


def test_reused_pid_after_deletion_counts_from_zero() -> None:
    m: CumulativeMap = CumulativeMap(counters)
    deltas(m, {1: {"n": 4}})
    for _ in range(2):
        deltas(m, {1: {"n": 4}})
        gone = m.expire(alive_set(set()))
    assert gone == [(1, {"n": 4})]
    # The tracer deleted the kernel entry; the new process's faults recreate it from zero.
    assert deltas(m, {1: {"n": 2}}) == {1: {"n": 2}}


def test_counter_reset_counts_from_zero() -> None:
    m: CumulativeMap = CumulativeMap(counters)
    deltas(m, {1: {"n": 100, "b1": 7}})
    # Deleted and recreated elsewhere between two reads: lower than before.
    assert deltas(m, {1: {"n": 3, "b1": 7}}) == {1: {"n": 3, "b1": 7}}
    assert deltas(m, {1: {"n": 5}}) == {1: {"n": 5}}  # a bucket vanished: also a reset
    assert deltas(m, {1: {"n": 6}}) == {1: {"n": 1}}


def test_key_vanished_from_the_map_is_forgotten() -> None:
    m: CumulativeMap = CumulativeMap(counters)
    deltas(m, {1: {"n": 4}, 2: {"n": 1}})
    assert deltas(m, {2: {"n": 1}}) == {}
    assert 1 not in m
    assert deltas(m, {1: {"n": 4}, 2: {"n": 1}}) == {1: {"n": 4}}


def test_owner_groups_keys_and_is_asked_once_per_expire() -> None:
    asked: list[object] = []

    def alive(owner: object) -> bool:
        asked.append(owner)
        return False

    m: CumulativeMap = CumulativeMap(counters, owner=lambda k: k[0])
    deltas(m, {(1, 0): {"n": 1}, (1, 1): {"n": 1}, (2, 0): {"n": 1}})
    m.expire(alive)
    assert asked == []  # everything changed: nobody asked
    deltas(m, {(1, 0): {"n": 1}, (1, 1): {"n": 1}, (2, 0): {"n": 2}})
    m.expire(alive)
    assert asked == [1]
    deltas(m, {(1, 0): {"n": 1}, (1, 1): {"n": 1}, (2, 0): {"n": 2}})
    assert sorted(k for k, _ in m.expire(alive)) == [(1, 0), (1, 1)]


def test_fewer_than_two_quiet_reads_is_refused() -> None:
    with pytest.raises(ValueError):
        CumulativeMap(counters, quiet_reads=1)


def test_proc_alive_on_the_real_procfs() -> None:
    alive = proc_alive("/proc")
    assert alive(os.getpid())
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert not alive(pid)
