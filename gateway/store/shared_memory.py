"""Router state shared by every worker of one instance, with no server: one shared-memory segment.

The gunicorn master makes the segment (a memfd) before it forks; each worker
maps it. The hot path never takes a lock: every worker writes only its own
cell per name (in flight, this minute's requests and tokens, latency
averages) and readers add the cells up. Cooldowns and failure windows are
shared rows that any worker may write, under an fcntl lock, which the kernel
drops if its holder dies. Without a master (tests, one process) the same
layout lives in a private map.

Layout, in 8-byte words: header | worker slots (pid) | name directory (hash) |
shared rows (cooldown, 60 one-second failure buckets) | cells (slot-major) |
health report bytes | key-limit rows | key-limit holds (slot-major; see memory_limits.py).
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import random
import struct
import tempfile
import time
from typing import Callable, Sequence

from ..types import Cooldown, EntityStats

log = logging.getLogger("gateway.state")

MAGIC = 0x5348494E47573031       # "SHINGW01"
SLOTS = 64                        # worker processes of one instance
ROWS = 16384                      # distinct names (deployments now, key hashes later)
WINDOW = 60                       # seconds a failure counts towards a cooldown
CELL = 8                          # words: in_flight, minute, requests, tokens, latency, n, ttft, n
ROW = 128                         # words: until, kind, retry_after, then WINDOW × (second, count)
ALPHA = 0.3                       # weight of a new latency sample in the moving average
HEALTH_BYTES = 1 << 20
KINDS = ("", "rate_limit", "auth", "failure")

_H_MAGIC, _H_INSTANCE, _H_PROBE, _H_SLOT_HIGH, _H_HEALTH_LEN = 0, 1, 2, 3, 4
_HEADER = 512
_SLOT_BASE = _HEADER
_DIR_BASE = _SLOT_BASE + SLOTS
_ROW_BASE = _DIR_BASE + ROWS
_CELL_BASE = _ROW_BASE + ROWS * ROW
_HEALTH_BASE = (_CELL_BASE + SLOTS * ROWS * CELL) * 8       # in bytes
LIMIT_ROWS = 16384                # keys (and key × model pairs) counted at once; idle ones are reused
LIMIT_ROW = 8                     # words: name hash, minute, requests, tokens, period, spend, last used, -
LIMIT_HOLD = 4                    # words per worker: in flight, reserved tokens, reserved cost, -
LIMIT_ROW_BASE = (_HEALTH_BASE + HEALTH_BYTES) // 8
LIMIT_HOLD_BASE = LIMIT_ROW_BASE + LIMIT_ROWS * LIMIT_ROW
SIZE = (LIMIT_HOLD_BASE + SLOTS * LIMIT_ROWS * LIMIT_HOLD) * 8
_NO_RETRY_AFTER = -1.0
_CELL_FIELDS = struct.Struct("<qqqqdqdq")    # in_flight, minute, requests, tokens, latency, n, ttft, n
_ROW_HEAD = struct.Struct("<dqd")            # cooldown until, kind, retry_after


def create_segment() -> int:
    """In the gunicorn master: a sized, stamped memfd whose number the forked workers inherit."""
    fd = _anonymous_file()
    os.ftruncate(fd, SIZE)
    with mmap.mmap(fd, SIZE) as segment:
        _stamp(segment)
    return fd


def release_worker(fd: int, pid: int) -> bool:
    """In the gunicorn master, when a worker exits however it ended (even SIGKILL): free its slot.

    Its requests in flight ended with it; its requests and tokens this minute
    still count. True when the worker held a slot.
    """
    with mmap.mmap(fd, SIZE) as segment:
        words = memoryview(segment).cast("q")
        try:
            with _FileLock(fd):
                for slot in range(words[_H_SLOT_HIGH]):
                    if words[_SLOT_BASE + slot] == pid:
                        _clear_slot(words, slot)
                        return True
            return False
        finally:
            words.release()


def _stamp(segment: mmap.mmap) -> None:
    """A new segment: a fresh instance id (every worker of it reports the same), then the magic."""
    words = memoryview(segment).cast("q")
    words[_H_INSTANCE] = random.getrandbits(62) + 1
    words[_H_MAGIC] = MAGIC
    words.release()


def _anonymous_file() -> int:
    """A memfd where there is one (Linux); elsewhere an unlinked temporary file does the same job."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("shin-gateway-state", 0)   # no CLOEXEC: survives gunicorn's re-exec
    with tempfile.TemporaryFile(prefix="shin-gateway-state-") as handle:
        fd = os.dup(handle.fileno())
    os.set_inheritable(fd, True)
    return fd


class SharedMemoryState:
    """The embedded RouterState: exact across the workers of one instance, nothing across instances."""
    backend = "shared-memory"

    def __init__(self, segment: mmap.mmap, fd: int | None, clock: Callable[[], float] = time.time):
        self._segment = segment
        self._fd = fd
        self._words = memoryview(segment).cast("q")
        self._floats = memoryview(segment).cast("d")
        self.clock = clock
        self._rows: dict[str, int] = {}
        self._cells: dict[str, int] = {}     # name → this worker's cell (word offset)
        self.instance_id = f"{self._words[_H_INSTANCE]:x}"
        self._slot = self._claim_slot()
        self._cell_base = _CELL_BASE + self._slot * ROWS * CELL

    @classmethod
    def open(cls, fd: int, clock: Callable[[], float] = time.time) -> "SharedMemoryState":
        """Map the master's segment; raise OSError/ValueError if `fd` is not one."""
        segment = mmap.mmap(fd, SIZE)
        if memoryview(segment).cast("q")[_H_MAGIC] != MAGIC:
            segment.close()
            raise ValueError(f"file descriptor {fd} is not a gateway state segment")
        return cls(segment, fd, clock)

    @classmethod
    def private(cls, clock: Callable[[], float] = time.time) -> "SharedMemoryState":
        """One process only (tests, a gateway run without the gunicorn master)."""
        segment = mmap.mmap(-1, SIZE)
        _stamp(segment)
        return cls(segment, None, clock)

    # --- the hot path: this worker's own cells, no lock ------------------------------------

    def begin(self, name: str) -> None:
        cell = self._cell(name)
        words = self._words
        words[cell] += 1
        minute = int(self.clock() // 60)
        if words[cell + 1] != minute:
            words[cell + 1], words[cell + 2], words[cell + 3] = minute, 0, 0
        words[cell + 2] += 1

    def end(self, name: str) -> None:
        cell = self._cell(name)
        if self._words[cell] > 0:
            self._words[cell] -= 1

    def add_tokens(self, name: str, tokens: int) -> None:
        if tokens <= 0:
            return
        cell = self._cell(name)
        words = self._words
        minute = int(self.clock() // 60)
        if words[cell + 1] != minute:
            words[cell + 1], words[cell + 2], words[cell + 3] = minute, 0, 0
        words[cell + 3] += tokens

    def observe_latency(self, name: str, seconds: float, first_token: bool) -> None:
        at = self._cell(name) + (6 if first_token else 4)
        count = self._words[at + 1]
        average = self._floats[at]
        self._floats[at] = seconds if count == 0 else average + ALPHA * (seconds - average)
        self._words[at + 1] = min(count + 1, 1 << 30)

    def stats(self, names: Sequence[str]) -> list[EntityStats]:
        now = self.clock()
        minute = int(now // 60)
        words, segment, unpack = self._words, self._segment, _CELL_FIELDS.unpack_from
        slots = range(words[_H_SLOT_HIGH])    # freed slots too: a gone worker's requests this minute count
        out = []
        for name in names:
            row = self._rows.get(name)
            if row is None:
                row = self._row(name)
            in_flight = requests = tokens = latency_n = ttft_n = 0
            latency_sum = ttft_sum = 0.0
            for slot in slots:
                flying, at_minute, asked, used, latency, n, ttft, ttft_count = unpack(
                    segment, (_CELL_BASE + (slot * ROWS + row) * CELL) * 8)
                in_flight += flying
                if at_minute == minute:
                    requests += asked
                    tokens += used
                if n:
                    latency_sum += latency * n
                    latency_n += n
                if ttft_count:
                    ttft_sum += ttft * ttft_count
                    ttft_n += ttft_count
            until, kind, retry_after = _ROW_HEAD.unpack_from(segment, (_ROW_BASE + row * ROW) * 8)
            cooldown = None if until <= now else Cooldown(
                until, KINDS[kind] or "failure", None if retry_after == _NO_RETRY_AFTER else retry_after)
            out.append(EntityStats(in_flight, requests, tokens, latency_sum / latency_n if latency_n else None,
                                   ttft_sum / ttft_n if ttft_n else None, cooldown))
        return out

    def worker_cells(self, names: Sequence[str]) -> list[EntityStats]:
        """This worker's own counts (what it alone adds to the instance), for the Redis backend to publish."""
        minute = int(self.clock() // 60)
        words, floats = self._words, self._floats
        out = []
        for name in names:
            cell = self._cell(name)
            current = words[cell + 1] == minute
            out.append(EntityStats(words[cell], words[cell + 2] if current else 0, words[cell + 3] if current else 0,
                                   floats[cell + 4] if words[cell + 5] else None,
                                   floats[cell + 6] if words[cell + 7] else None))
        return out

    # --- shared rows, under the lock ---------------------------------------------------------

    def record_failure(self, name: str, threshold: int, cooldown: Cooldown) -> Cooldown | None:
        row = _ROW_BASE + self._row(name) * ROW
        with self._locked():
            now = self.clock()
            second = int(now)
            bucket = row + 3 + 2 * (second % WINDOW)
            words = self._words
            if words[bucket] != second:
                words[bucket], words[bucket + 1] = second, 0
            words[bucket + 1] += 1
            failures = sum(words[b + 1] for b in range(row + 3, row + 3 + 2 * WINDOW, 2)
                           if words[b] > second - WINDOW)
            if failures >= max(1, threshold) and cooldown.until > now:
                self._set_cooldown(row, cooldown)
                for b in range(row + 3, row + 3 + 2 * WINDOW):   # fresh failures after it, not old ones
                    words[b] = 0
            return self._cooldown(self._row(name), now)

    def cool(self, name: str, cooldown: Cooldown) -> None:
        row = _ROW_BASE + self._row(name) * ROW
        with self._locked():
            self._set_cooldown(row, cooldown)

    def claim_probe(self, interval: float) -> bool:
        with self._locked():
            now = self.clock()
            if now - self._floats[_H_PROBE] < interval * 0.9:
                return False
            self._floats[_H_PROBE] = now
            return True

    def publish_health(self, report: bytes) -> None:
        report = report[:HEALTH_BYTES]
        with self._locked():
            self._segment[_HEALTH_BASE:_HEALTH_BASE + len(report)] = report
            self._words[_H_HEALTH_LEN] = len(report)

    def health_report(self) -> bytes | None:
        with self._locked():
            length = self._words[_H_HEALTH_LEN]
            return self._segment[_HEALTH_BASE:_HEALTH_BASE + length] if length else None

    def status(self) -> dict[str, str]:
        return {"state": "shared-memory" if self._fd is not None else "process-local"}

    def limits(self):
        """Key limits in this segment (store/memory_limits.py), counted with every other worker's."""
        from .memory_limits import MemoryLimits
        return MemoryLimits(self._words, self._floats, self._locked, self._slot, _H_SLOT_HIGH)

    def close(self) -> None:
        """Give the worker slot back (a worker that dies without this is found by the next one)."""
        if self._segment.closed:
            return
        with self._locked():
            self._release(self._slot)
        self._words.release()
        self._floats.release()
        self._segment.close()

    # --- internals ---------------------------------------------------------------------------

    def _cell(self, name: str) -> int:
        cell = self._cells.get(name)
        if cell is None:
            cell = self._cells[name] = self._cell_base + self._row(name) * CELL
        return cell

    def _row(self, name: str) -> int:
        row = self._rows.get(name)
        if row is not None:
            return row
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True) or 1
        start = key % ROWS
        with self._locked():
            for probe in range(ROWS):
                at = (start + probe) % ROWS
                held = self._words[_DIR_BASE + at]
                if held == key or held == 0:
                    self._words[_DIR_BASE + at] = key
                    self._rows[name] = at
                    return at
        raise RuntimeError(f"the shared router state is full ({ROWS} names)")

    def _cooldown(self, row: int, now: float) -> Cooldown | None:
        at = _ROW_BASE + row * ROW
        until = self._floats[at]
        if until <= now:
            return None
        retry_after = self._floats[at + 2]
        return Cooldown(until, KINDS[self._words[at + 1]] or "failure",
                        None if retry_after == _NO_RETRY_AFTER else retry_after)

    def _set_cooldown(self, row_at: int, cooldown: Cooldown) -> None:
        """Never shortens a cooldown already in force."""
        if cooldown.until <= self._floats[row_at] or not math.isfinite(cooldown.until):
            return
        self._floats[row_at] = cooldown.until
        self._words[row_at + 1] = KINDS.index(cooldown.kind) if cooldown.kind in KINDS else 3
        self._floats[row_at + 2] = _NO_RETRY_AFTER if cooldown.retry_after is None else cooldown.retry_after

    def _claim_slot(self) -> int:
        pid = os.getpid()
        with self._locked():
            words = self._words
            free = None
            for slot in range(SLOTS):
                held = words[_SLOT_BASE + slot]
                if held and held != pid and not _alive(held):
                    log.info("worker %d left without releasing its router state; clearing it", held,
                             extra={"event": "worker_state_released"})
                    self._release(slot)
                    held = 0
                if free is None and held == 0:
                    free = slot
            if free is None:
                raise RuntimeError(f"more than {SLOTS} workers share one router state")
            words[_SLOT_BASE + free] = pid
            words[_H_SLOT_HIGH] = max(words[_H_SLOT_HIGH], free + 1)
            return free

    def _release(self, slot: int) -> None:
        _clear_slot(self._words, slot)

    def _locked(self):
        return _FileLock(self._fd)


def _clear_slot(words: memoryview, slot: int) -> None:
    """A gone worker holds nothing in flight; its requests and tokens this minute still count."""
    base = _CELL_BASE + slot * ROWS * CELL
    for row in range(ROWS):
        if words[_DIR_BASE + row]:
            words[base + row * CELL] = 0
    holds = LIMIT_HOLD_BASE + slot * LIMIT_ROWS * LIMIT_HOLD    # its reservations went with it
    for row in range(LIMIT_ROWS):
        if words[LIMIT_ROW_BASE + row * LIMIT_ROW]:
            words[holds + row * LIMIT_HOLD:holds + (row + 1) * LIMIT_HOLD] = _ZERO_HOLD
    words[_SLOT_BASE + slot] = 0


_ZERO_HOLD = memoryview(bytes(8 * LIMIT_HOLD)).cast("q")


class _FileLock:
    """fcntl record lock on the segment: cheap when free, released by the kernel if its holder dies.

    Within one process it is a no-op: nothing under it yields to another greenlet.
    """
    __slots__ = ("_fd",)

    def __init__(self, fd: int | None):
        self._fd = fd

    def __enter__(self):
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
