"""gateway/store/shared_memory.py: counters and cooldowns that every worker of an instance adds up.

Two views of one segment in one process hold two worker slots (like two
workers); a forked child is a real second worker process.
"""
from __future__ import annotations

import mmap
import os
import select
import signal
import time

import pytest

from gateway.store.shared_memory import HEALTH_BYTES, SLOTS, SharedMemoryState, create_segment, release_worker
from gateway.types import Cooldown, EntityStats


class Time:
    """The state's clock (time.time()), moved by the test; starts 15 s into a calendar minute."""

    def __init__(self, now: float = 1_700_000_055.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Pipe:
    """One-way message between a parent and a forked worker; a silent peer fails the test, not hangs it."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()

    def send(self, data: bytes) -> None:
        os.write(self.write_fd, data)

    def receive(self, timeout: float = 10.0) -> bytes:
        ready, _, _ = select.select([self.read_fd], [], [], timeout)
        assert ready, "the other process said nothing"
        return os.read(self.read_fd, 4096)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def run_forked(body) -> int:
    """Run `body()` in a forked child, another worker process; exit code 0 if it returned."""
    pid = os.fork()
    if pid == 0:               # pragma: no cover - the child never returns to pytest
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def joined(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def segment():
    fd = create_segment()
    yield fd
    os.close(fd)


@pytest.fixture
def views(segment):
    """Two workers' views of one segment on one clock; closed after the test."""
    clock = Time()
    opened = [SharedMemoryState.open(segment, clock), SharedMemoryState.open(segment, clock)]
    yield clock, opened[0], opened[1]
    for view in opened:
        view.close()


def stats(view, name) -> EntityStats:
    return view.stats([name])[0]


# --- counters added up over workers ----------------------------------------------------------------

def test_begin_end_and_tokens_add_up_over_two_workers(views):
    clock, one, two = views
    one.begin("x")
    one.begin("x")
    two.begin("x")
    assert stats(one, "x")[:3] == (3, 3, 0)
    two.end("x")
    one.add_tokens("x", 10)
    two.add_tokens("x", 5)
    assert stats(one, "x")[:3] == stats(two, "x")[:3] == (2, 3, 15)


def test_each_worker_has_its_own_cells(views):
    clock, one, two = views
    one.begin("x")
    one.add_tokens("x", 7)
    two.begin("x")
    two.begin("x")
    assert one.worker_cells(["x"])[0][:3] == (1, 1, 7)
    assert two.worker_cells(["x"])[0][:3] == (2, 2, 0)


def test_latency_averages_over_workers_by_sample_count(views):
    clock, one, two = views
    one.observe_latency("x", 1.0, first_token=False)
    two.observe_latency("x", 3.0, first_token=False)
    two.observe_latency("x", 0.4, first_token=True)
    x = stats(one, "x")
    assert x.latency == pytest.approx(2.0) and x.ttft == pytest.approx(0.4)


def test_latency_is_a_moving_average():
    state = SharedMemoryState.private(clock=Time())
    state.observe_latency("x", 1.0, first_token=False)
    assert stats(state, "x").latency == pytest.approx(1.0)
    state.observe_latency("x", 2.0, first_token=False)
    assert 1.0 < stats(state, "x").latency < 1.5          # moves towards the new sample, not to the mean
    for _ in range(30):
        state.observe_latency("x", 5.0, first_token=False)
    assert stats(state, "x").latency == pytest.approx(5.0, abs=0.01)
    assert stats(state, "x").ttft is None


def test_end_never_goes_below_zero():
    state = SharedMemoryState.private(clock=Time())
    state.end("x")
    state.begin("x")
    state.end("x")
    state.end("x")
    assert stats(state, "x").in_flight == 0
    state.begin("x")
    assert stats(state, "x").in_flight == 1


def test_tokens_that_are_not_positive_are_ignored():
    state = SharedMemoryState.private(clock=Time())
    state.add_tokens("x", 5)
    state.add_tokens("x", 0)
    state.add_tokens("x", -3)
    assert stats(state, "x").tokens == 5


def test_names_are_counted_apart():
    state = SharedMemoryState.private(clock=Time())
    names = [f"deployment-{i}" for i in range(2000)]
    for i, name in enumerate(names):
        for _ in range(i % 3 + 1):
            state.begin(name)
    assert [s.requests for s in state.stats(names)] == [i % 3 + 1 for i in range(len(names))]


def test_an_unknown_name_has_all_zero_stats(views):
    clock, one, two = views
    one.begin("known")
    assert one.stats(["never-seen"]) == [EntityStats(0, 0, 0, None, None, None)]
    assert SharedMemoryState.private().stats(["x", "y"]) == [EntityStats(), EntityStats()]


# --- the calendar minute ----------------------------------------------------------------------------

def test_a_new_minute_starts_requests_and_tokens_from_zero(views):
    clock, one, two = views
    one.begin("x")
    two.begin("x")
    one.add_tokens("x", 40)
    clock.now += 44.9                                   # still the same minute
    assert stats(one, "x")[:3] == (2, 2, 40)
    clock.now += 0.2                                    # the next one
    assert stats(one, "x")[:3] == (2, 0, 0)             # in flight is not per minute
    two.begin("x")
    one.add_tokens("x", 3)
    assert stats(two, "x")[:3] == (3, 1, 3)


def test_tokens_first_in_a_new_minute_reset_the_requests_too():
    clock = Time()
    state = SharedMemoryState.private(clock=clock)
    state.begin("x")
    state.begin("x")
    clock.now += 60
    state.add_tokens("x", 9)
    assert stats(state, "x")[1:3] == (0, 9)
    state.begin("x")
    assert stats(state, "x")[1:3] == (1, 9)


# --- failures and cooldowns --------------------------------------------------------------------------

def test_failures_from_two_workers_reach_the_threshold_together(views):
    clock, one, two = views
    cooldown = Cooldown(clock() + 30, "failure")
    assert one.record_failure("x", 3, cooldown) is None
    assert two.record_failure("x", 3, cooldown) is None
    assert one.record_failure("x", 3, cooldown) == cooldown
    assert stats(two, "x").cooldown == cooldown


def test_failures_leave_the_window_after_60_seconds():
    clock = Time()
    state = SharedMemoryState.private(clock=clock)
    cooldown = lambda: Cooldown(clock() + 30, "failure")   # noqa: E731
    state.record_failure("x", 2, cooldown())
    clock.now += 59
    assert state.record_failure("x", 3, cooldown()) is None
    assert state.record_failure("x", 3, cooldown()) is not None     # 3 within 59 s
    clock.now += 200
    state.record_failure("y", 2, cooldown())
    clock.now += 61
    assert state.record_failure("y", 2, cooldown()) is None          # the first one is 61 s old


def test_a_cooldown_clears_the_failures_that_caused_it():
    clock = Time()
    state = SharedMemoryState.private(clock=clock)
    state.record_failure("x", 2, Cooldown(clock() + 5, "failure"))
    assert state.record_failure("x", 2, Cooldown(clock() + 5, "failure")) is not None
    clock.now += 6
    assert state.record_failure("x", 2, Cooldown(clock() + 5, "failure")) is None


def test_record_failure_reports_a_cooldown_already_in_force():
    clock = Time()
    state = SharedMemoryState.private(clock=clock)
    state.cool("x", Cooldown(clock() + 100, "auth"))
    assert state.record_failure("x", 5, Cooldown(clock() + 5, "failure")) == Cooldown(clock() + 100, "auth")


def test_a_cooldown_ends_at_its_time():
    clock = Time()
    state = SharedMemoryState.private(clock=clock)
    cooldown = Cooldown(clock() + 10, "rate_limit", 10.0)
    state.cool("x", cooldown)
    clock.now += 9.9
    assert stats(state, "x").cooldown == cooldown
    clock.now += 0.2
    assert stats(state, "x").cooldown is None


@pytest.mark.parametrize("kind, retry_after", [("rate_limit", 12.5), ("rate_limit", None), ("auth", None),
                                               ("failure", 0.0), ("failure", None)])
def test_a_cooldown_keeps_its_kind_and_retry_after(views, kind, retry_after):
    clock, one, two = views
    one.cool("x", Cooldown(clock() + 30, kind, retry_after))
    assert stats(two, "x").cooldown == Cooldown(clock() + 30, kind, retry_after)


def test_a_cooldown_is_never_shortened(views):
    clock, one, two = views
    one.cool("x", Cooldown(clock() + 100, "rate_limit", 100.0))
    two.cool("x", Cooldown(clock() + 10, "failure"))
    assert stats(one, "x").cooldown == Cooldown(clock() + 100, "rate_limit", 100.0)
    two.record_failure("x", 1, Cooldown(clock() + 20, "failure"))
    assert stats(one, "x").cooldown == Cooldown(clock() + 100, "rate_limit", 100.0)
    two.cool("x", Cooldown(clock() + 200, "auth"))
    assert stats(one, "x").cooldown == Cooldown(clock() + 200, "auth")


def test_cooldowns_are_per_name(views):
    clock, one, two = views
    one.cool("x", Cooldown(clock() + 30, "auth"))
    assert stats(two, "y").cooldown is None


# --- worker slots ----------------------------------------------------------------------------------

def test_a_forked_worker_adds_to_its_parents_counts(views, segment):
    clock, one, two = views
    counted, release = Pipe(), Pipe()

    def worker():
        state = SharedMemoryState.open(segment, clock)
        state.begin("x")
        state.begin("x")
        state.add_tokens("x", 11)
        state.observe_latency("x", 3.0, first_token=False)
        state.observe_latency("x", 0.5, first_token=True)
        state.cool("y", Cooldown(clock() + 30, "auth"))
        state.end("x")
        counted.send(b"1")
        release.receive()
        state.end("x")
        state.close()
    one.begin("x")
    one.observe_latency("x", 1.0, first_token=False)
    pid = run_forked(worker)
    try:
        assert counted.receive() == b"1"
        x = stats(two, "x")
        assert x[:3] == (2, 3, 11)
        assert x.latency == pytest.approx(2.0) and x.ttft == pytest.approx(0.5)
        assert stats(two, "y").cooldown.kind == "auth"
    finally:
        release.send(b"1")
        assert joined(pid) == 0
        counted.close()
        release.close()
    assert stats(two, "x").in_flight == 1


def test_a_dead_workers_in_flight_is_cleared_when_a_new_worker_claims_a_slot(views, segment):
    clock, one, two = views
    started = Pipe()

    def worker():                                      # dies without close(), holding a request
        state = SharedMemoryState.open(segment, clock)
        state.begin("x")
        state.add_tokens("x", 7)
        started.send(b"1")
    assert joined(run_forked(worker)) == 0
    assert started.receive() == b"1"
    started.close()
    assert stats(one, "x")[:3] == (1, 1, 7)             # not found out yet
    replacement = SharedMemoryState.open(segment, clock)
    try:
        assert stats(one, "x").in_flight == 0
        assert stats(one, "x")[1:3] == (1, 7)           # its requests and tokens this minute still count
    finally:
        replacement.close()


def test_a_dead_workers_requests_still_count_when_its_replacement_takes_another_slot(segment):
    clock = Time()
    one = SharedMemoryState.open(segment, clock)
    closing = SharedMemoryState.open(segment, clock)

    def worker():                                      # takes the slot above `closing`, dies holding it
        state = SharedMemoryState.open(segment, clock)
        state.begin("x")
        state.add_tokens("x", 7)
    assert joined(run_forked(worker)) == 0
    closing.close()                                    # a free slot below the dead worker's
    replacement = SharedMemoryState.open(segment, clock)
    try:
        assert stats(one, "x")[:3] == (0, 1, 7)
    finally:
        replacement.close()
        one.close()


def test_a_closed_workers_requests_this_minute_still_count(views, segment):
    """A worker restarted by gunicorn (max_requests, reload) must not hand its rpm budget back."""
    clock, one, two = views
    leaving = SharedMemoryState.open(segment, clock)
    leaving.begin("x")
    leaving.add_tokens("x", 50)
    leaving.close()
    assert stats(one, "x")[:3] == (0, 1, 50)


def test_a_closed_workers_in_flight_is_released(views, segment):
    clock, one, two = views
    leaving = SharedMemoryState.open(segment, clock)
    leaving.begin("x")
    assert stats(one, "x").in_flight == 1
    leaving.close()
    leaving.close()                                    # twice is harmless
    assert stats(one, "x").in_flight == 0


def test_slots_run_out_past_the_worker_limit(segment):
    opened = []
    try:
        for _ in range(SLOTS):
            opened.append(SharedMemoryState.open(segment, Time()))
        with pytest.raises(RuntimeError):
            SharedMemoryState.open(segment, Time())
        opened.pop().close()
        opened.append(SharedMemoryState.open(segment, Time()))   # a freed slot is taken again
    finally:
        for view in opened:
            view.close()


# --- health probes and report ---------------------------------------------------------------------------

def test_one_of_two_workers_wins_the_probe_each_interval(views):
    clock, one, two = views
    assert one.claim_probe(10) is True
    assert two.claim_probe(10) is False and one.claim_probe(10) is False
    clock.now += 5
    assert two.claim_probe(10) is False
    clock.now += 5
    assert [two.claim_probe(10), one.claim_probe(10)] == [True, False]


def test_a_forked_worker_takes_the_probe_from_its_parent(views, segment):
    clock, one, two = views

    def worker():
        state = SharedMemoryState.open(segment, clock)
        assert state.claim_probe(30)
        state.close()
    assert joined(run_forked(worker)) == 0
    assert one.claim_probe(30) is False


def test_the_health_report_round_trips_between_workers(views):
    clock, one, two = views
    assert two.health_report() is None
    one.publish_health(b'{"healthy_count": 2}')
    assert two.health_report() == b'{"healthy_count": 2}'
    two.publish_health(b"{}")
    assert one.health_report() == b"{}"


def test_a_health_report_is_truncated_at_one_mebibyte(views):
    clock, one, two = views
    big = bytes(range(256)) * (HEALTH_BYTES // 256) + b"tail past the limit"
    one.publish_health(big)
    report = two.health_report()
    assert len(report) == HEALTH_BYTES and report == big[:HEALTH_BYTES]


# --- opening and identity ----------------------------------------------------------------------------------

def test_views_of_one_segment_share_the_instance_id(views):
    clock, one, two = views
    assert one.instance_id == two.instance_id
    assert SharedMemoryState.private().instance_id != one.instance_id


def test_status_names_the_backend(views):
    clock, one, two = views
    assert one.backend == "shared-memory"
    assert one.status() == {"state": "shared-memory"}
    assert SharedMemoryState.private().status() == {"state": "process-local"}


def test_opening_a_file_that_is_not_a_segment_fails():
    fd = os.memfd_create("not-a-segment", 0)
    try:
        with pytest.raises((ValueError, OSError)):
            SharedMemoryState.open(fd)                   # empty: too small to map
        os.ftruncate(fd, 1 << 27)
        with pytest.raises(ValueError):
            SharedMemoryState.open(fd)                   # big enough, but not stamped
    finally:
        os.close(fd)


def test_a_segment_is_stamped_and_sized(segment):
    size = os.fstat(segment).st_size
    with mmap.mmap(segment, size) as mapped:
        assert mapped[:8] != bytes(8)
    assert size > HEALTH_BYTES


def test_the_master_releases_a_killed_workers_slot(segment):
    """gunicorn's child_exit: a worker SIGKILLed while holding requests leaves nothing in flight."""
    clock = Time()
    survivor = SharedMemoryState.open(segment, clock)
    holding = Pipe()

    def worker():                                      # holds two requests, then waits to be killed
        state = SharedMemoryState.open(segment, clock)
        state.begin("x")
        state.begin("x")
        holding.send(b"1")
        time.sleep(30)
    pid = run_forked(worker)
    try:
        assert holding.receive() == b"1"
        assert stats(survivor, "x")[:2] == (2, 2)
        os.kill(pid, signal.SIGKILL)
        assert joined(pid) == -signal.SIGKILL
        assert stats(survivor, "x").in_flight == 2         # nobody has noticed yet
        assert release_worker(segment, pid) is True
        assert stats(survivor, "x")[:2] == (0, 2)          # its requests this minute still count
        assert release_worker(segment, pid) is False       # nothing left to release
    finally:
        holding.close()
        survivor.close()


def test_without_memfd_an_unlinked_file_is_the_segment(monkeypatch):
    """Where os.memfd_create does not exist (macOS), workers still share one segment."""
    monkeypatch.delattr(os, "memfd_create")
    fd = create_segment()
    try:
        assert os.get_inheritable(fd)
        one, two = SharedMemoryState.open(fd), SharedMemoryState.open(fd)
        one.begin("x")
        two.begin("x")
        assert one.stats(["x"])[0].in_flight == 2
        one.close()
        two.close()
    finally:
        os.close(fd)
