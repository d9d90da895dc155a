"""gateway/store/memory_limits.py: key limits that every worker of an instance checks and reserves as one.

Two views of one segment in one process hold two worker slots (like two
workers); forked children are real worker processes racing for the same rows.
"""
from __future__ import annotations

import os
import signal

import pytest

from gateway.store.shared_memory import SharedMemoryState, release_worker
from gateway.types import Ask

from .test_shared_memory import Pipe, run_forked
from .test_shared_memory import segment as segment   # noqa: F401 - a fixture, used by name

NOW = 1_700_000_055.0      # 15 s into a calendar minute


def ask(name="key", rpm=None, tpm=None, parallel=None, budget=None, period=0.0, base_spend=0.0,
        tokens=0, cost=0.0) -> Ask:
    return Ask(name, rpm, tpm, parallel, budget, period, base_spend, tokens, cost)


@pytest.fixture
def two_workers(segment):
    first, second = SharedMemoryState.open(segment), SharedMemoryState.open(segment)
    yield first.limits(), second.limits()
    first.close()
    second.close()


def test_rpm_is_one_counter_for_every_worker(two_workers):
    a, b = two_workers
    asks = [ask(rpm=5)]
    granted = [(a if i % 2 else b).reserve(asks, NOW, f"l{i}", NOW + 60).ok for i in range(12)]
    assert granted == [True] * 5 + [False] * 7
    refused = a.reserve(asks, NOW, "late", NOW + 60)
    assert refused.refused_by == "rpm" and refused.name == "key" and refused.remaining_requests == 0
    assert refused.retry_after == pytest.approx(45.0)


def test_the_next_minute_starts_a_fresh_rpm_window(two_workers):
    a, b = two_workers
    asks = [ask(rpm=2)]
    assert [a.reserve(asks, NOW, str(i), NOW + 60).ok for i in range(3)] == [True, True, False]
    next_minute = NOW + 45
    verdict = b.reserve(asks, next_minute, "x", next_minute + 60)
    assert verdict.ok and verdict.remaining_requests == 1


def test_parallel_counts_what_every_worker_holds_and_settling_frees_it(two_workers):
    a, b = two_workers
    asks = [ask(parallel=2)]
    assert a.reserve(asks, NOW, "1", NOW + 60).ok and b.reserve(asks, NOW, "2", NOW + 60).ok
    refused = a.reserve(asks, NOW, "3", NOW + 60)
    assert (refused.ok, refused.refused_by, refused.retry_after) == (False, "parallel", 1.0)
    b.settle(asks, "2", 0, 0.0, NOW)
    assert a.reserve(asks, NOW, "4", NOW + 60).ok


def test_tpm_holds_estimates_until_settled_with_the_real_count(two_workers):
    a, b = two_workers
    asks = [ask(tpm=100, tokens=30)]
    grants = [w.reserve(asks, NOW, str(i), NOW + 60) for i, w in enumerate((a, b, a, b))]
    assert [g.ok for g in grants] == [True, True, True, False]      # 3 × 30 held; a 4th would make 120
    assert grants[2].remaining_tokens == 10 and grants[3].refused_by == "tpm"
    for worker, lease in ((a, "0"), (b, "1"), (a, "2")):
        worker.settle(asks, lease, 18, 0.0, NOW)                    # each really used 18: 54 used
    assert a.reserve(asks, NOW, "4", NOW + 60).remaining_tokens == 100 - 54 - 30


def test_tpm_lets_one_request_through_alone_while_any_tokens_are_left(two_workers):
    a, b = two_workers
    big = [ask(tpm=100, tokens=500)]
    first = a.reserve(big, NOW, "1", NOW + 60)
    assert first.ok                                   # nothing in flight, nothing used: it may go
    assert not b.reserve(big, NOW, "2", NOW + 60).ok  # but not a second one beside it
    a.settle(big, "1", 120, 0.0, NOW)                 # it used more than the whole minute's tokens
    refused = b.reserve(big, NOW, "3", NOW + 60)
    assert refused.refused_by == "tpm" and refused.remaining_tokens == 0


def test_budget_is_seeded_from_the_database_and_overrun_by_at_most_one_request(two_workers):
    a, b = two_workers
    asks = [ask(budget=1.0, base_spend=0.7, cost=0.1)]
    grants = [w.reserve(asks, NOW, str(i), NOW + 60) for i, w in enumerate((a, b, a, b))]
    assert grants[0].spend == pytest.approx(0.7)
    assert [g.ok for g in grants] == [True, True, True, False]     # 0.7 + 3 × 0.1 = 1.0 held
    assert grants[3].refused_by == "budget"
    for worker, lease in ((a, "0"), (b, "1"), (a, "2")):
        spend = worker.settle(asks, lease, 10, 0.15, NOW)           # each cost more than estimated
    assert spend == pytest.approx(1.15)
    assert not a.reserve(asks, NOW, "late", NOW + 60).ok           # over budget: nothing more


def test_a_new_budget_period_starts_from_the_database_spend_and_never_goes_back(two_workers):
    a, b = two_workers
    old = [ask(budget=1.0, period=1000.0, base_spend=0.9, cost=0.2)]
    assert a.reserve(old, NOW, "1", NOW + 60).ok          # alone: allowed while spend < budget
    assert a.settle(old, "1", 1, 0.2, NOW) == pytest.approx(1.1)
    assert not b.reserve(old, NOW, "2", NOW + 60).ok
    new = [ask(budget=1.0, period=2000.0, base_spend=0.0, cost=0.2)]
    fresh = b.reserve(new, NOW, "3", NOW + 60)
    assert fresh.ok and fresh.spend == 0.0
    a.reserve(old, NOW, "4", NOW + 60)                    # a straggler from the old period
    assert a.settle(old, "4", 1, 0.5, NOW) == 0.0         # counts nothing against the new one
    assert b.settle(new, "3", 1, 0.2, NOW) == pytest.approx(0.2)


def test_asks_are_granted_all_or_none(two_workers):
    a, b = two_workers
    key_and_model = [ask("k", rpm=10), ask("k|gpt", rpm=1)]
    assert a.reserve(key_and_model, NOW, "1", NOW + 60).ok
    refused = b.reserve(key_and_model, NOW, "2", NOW + 60)
    assert (refused.refused_by, refused.name) == ("rpm", "k|gpt")
    assert refused.remaining_requests == 9                # the key's own row was not charged
    other_model = [ask("k", rpm=10), ask("k|claude", rpm=1)]
    assert b.reserve(other_model, NOW, "3", NOW + 60).remaining_requests == 8


def test_a_worker_killed_mid_request_frees_its_reservations(segment):
    survivor = SharedMemoryState.open(segment)
    limits = survivor.limits()
    asks = [ask(parallel=1)]
    ready = Pipe()

    def worker():
        child = SharedMemoryState.open(segment)
        assert child.limits().reserve(asks, NOW, "child", NOW + 60).ok
        ready.send(b"held")
        signal.pause()

    pid = run_forked(worker)
    try:
        assert ready.receive() == b"held"
        assert not limits.reserve(asks, NOW, "blocked", NOW + 60).ok
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert release_worker(segment, pid)               # what the gunicorn master does in child_exit
        assert limits.reserve(asks, NOW, "free", NOW + 60).ok
    finally:
        ready.close()
        survivor.close()


def test_forked_workers_racing_never_grant_more_than_the_limit(segment):
    """Four real processes, 200 reservations each, one rpm limit of 150: exactly 150 granted."""
    asks = [ask("race", rpm=150)]
    pipes = [Pipe() for _ in range(4)]

    def racer(pipe):
        def body():
            limits = SharedMemoryState.open(segment).limits()
            granted = sum(limits.reserve(asks, NOW, str(i), NOW + 60).ok for i in range(200))
            pipe.send(str(granted).encode())
        return body

    pids = [run_forked(racer(pipe)) for pipe in pipes]
    try:
        counts = [int(pipe.receive(30)) for pipe in pipes]
    finally:
        for pid in pids:
            os.waitpid(pid, 0)
        for pipe in pipes:
            pipe.close()
    assert sum(counts) == 150


def test_a_full_table_reuses_idle_rows_and_refuses_only_while_none_is_idle(segment):
    from gateway.errors import ServiceUnavailable
    from gateway.store.memory_limits import IDLE
    from gateway.store.shared_memory import LIMIT_ROWS

    state = SharedMemoryState.open(segment)
    limits = state.limits()
    try:
        filled = 0
        with pytest.raises(ServiceUnavailable):            # probing finds only rows used in the last IDLE s
            while True:
                assert limits.reserve([ask(f"key-{filled}", rpm=1)], NOW, "", 0).ok
                filled += 1
        assert filled > 0.9 * LIMIT_ROWS
        later = NOW + IDLE + 1
        for i in range(100):
            assert limits.reserve([ask(f"newcomer-{i}", rpm=1)], later, "", 0).ok
        again = limits.reserve([ask("newcomer-99", rpm=1)], later, "", 0)
        assert again.refused_by == "rpm"                   # it kept its own row, not a neighbour's
    finally:
        state.close()


@pytest.mark.parametrize("seed", range(1, 9))
def test_the_embedded_backend_agrees_with_the_reference_model(seed):
    """The same random sequence the Redis backend is held to (tests/unit/limit_model.py)."""
    from .limit_model import compare

    state = SharedMemoryState.private()
    try:
        compare(state.limits(), seed, expiring_leases=False)
    finally:
        state.close()
