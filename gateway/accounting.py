"""What a request cost, and the per-worker writer that gets spend rows into the database off the hot path.

A request only appends its row to a bounded in-memory queue; one greenlet per
worker writes the queue in batches. While the database is down the rows wait
(oldest dropped, and counted, only when the queue is full) and are retried
with a growing pause; a graceful stop flushes them.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Protocol, Sequence

import gevent
import gevent.lock

from .errors import StorageUnavailable
from .types import Deployment, SpendRow, Usage

RETRY_FIRST = 1.0
RETRY_MAX = 5.0


def cost_of(deployment: Deployment | None, usage: Usage | None) -> float:
    """Usage priced with the deployment's `model_info` prices (0 when unset or when nothing was used)."""
    if deployment is None or usage is None:
        return 0.0
    return (usage.prompt_tokens * deployment.input_cost_per_token
            + usage.completion_tokens * deployment.output_cost_per_token)


class SpendSink(Protocol):
    """The part of the Database the writer uses."""
    def write_spend(self, rows: Sequence[SpendRow]) -> None: ...


class SpendWriter:
    """Spend rows queued by requests, written to the database in order, in batches, by one greenlet.

    `add` never waits and never raises. Rows leave the queue in the order they
    came, each written once: a batch is taken off the queue and written under
    one lock (the background greenlet and `flush` take turns), and a batch the
    database refused goes back to the front. Row ids make a retried batch
    harmless even if the database did commit it before failing to answer.
    """

    def __init__(self, database: SpendSink, log, batch: int = 500, interval: float = 0.5,
                 max_queue: int = 100_000, sleep: Callable[[float], None] = gevent.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self._database = database
        self._log = log
        self._batch = max(1, batch)
        self._interval = interval
        self._max_queue = max(1, max_queue)
        self._sleep = sleep
        self._clock = clock
        self._queue: collections.deque[SpendRow] = collections.deque()
        self._writing = gevent.lock.Semaphore()
        self._greenlet: gevent.Greenlet | None = None
        self._added = 0          # rows ever added
        self._gone = 0           # rows ever written or dropped (they leave in order)
        self.dropped = 0
        self._overflowing = False
        self._failing = False
        self._retry = RETRY_FIRST

    @property
    def pending(self) -> int:
        """Rows not written yet (queued, or in a batch being written)."""
        return self._added - self._gone

    def add(self, row: SpendRow) -> None:
        try:
            if len(self._queue) >= self._max_queue:
                self._drop_oldest(len(self._queue) - self._max_queue + 1)
            self._queue.append(row)
            self._added += 1
        except Exception:   # never the request's problem
            pass

    def start(self) -> "SpendWriter":
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        return self

    def flush(self, timeout: float) -> bool:
        """Write every row queued now (rows added meanwhile may wait); False if the time ran out first."""
        target = self._added
        deadline = self._clock() + timeout
        while self._gone < target:
            if not self._write_batch():
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._sleep(min(self._retry, left))
                self._retry = min(self._retry * 2, RETRY_MAX)
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the greenlet (never in the middle of a write) and flush what is queued."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            with self._writing:   # so the greenlet is sleeping or waiting for the lock, never writing
                greenlet.kill(block=True, timeout=timeout)
        written = self.flush(timeout)
        if not written:
            self._log.warning("stopping with %d spend rows not written: the database is unavailable",
                              self.pending, extra={"event": "spend_rows_lost", "rows": self.pending})
        return written

    # --- internals ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._sleep(self._interval)
            while self._queue:
                if not self._write_batch():
                    self._sleep(self._retry)
                    self._retry = min(self._retry * 2, RETRY_MAX)

    def _write_batch(self) -> bool:
        """Write the oldest rows, up to a batch; True when written (or nothing was queued)."""
        with self._writing:
            queue = self._queue
            rows = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
            if not rows:
                return True
            try:
                self._database.write_spend(rows)
            except BaseException as exc:
                self._put_back(rows)
                if not isinstance(exc, Exception):
                    raise
                self._outage(exc)
                return False
            self._gone += len(rows)
            self._retry = RETRY_FIRST
            if self._failing:
                self._failing = False
                self._log.info("spend rows are being written again (%d waiting)", len(queue),
                               extra={"event": "spend_writes_resumed"})
            if self._overflowing and len(queue) < self._max_queue:
                self._overflowing = False
            return True

    def _put_back(self, rows: list[SpendRow]) -> None:
        """A batch the database did not take goes back to the front, in order; the queue stays bounded."""
        self._queue.extendleft(reversed(rows))
        excess = len(self._queue) - self._max_queue
        if excess > 0:
            self._drop_oldest(excess)

    def _drop_oldest(self, count: int) -> None:
        for _ in range(count):
            self._queue.popleft()
        self._gone += count
        self.dropped += count
        if not self._overflowing:
            self._overflowing = True
            self._log.warning("the spend queue is full (%d rows): dropping the oldest rows until the database "
                              "catches up", self._max_queue, extra={"event": "spend_queue_full"})

    def _outage(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            # Our own StorageUnavailable says what is wrong; any other exception is named by its
            # type only, since a driver's message may quote the rows it refused.
            reason = exc.message if isinstance(exc, StorageUnavailable) else type(exc).__name__
            self._log.warning("cannot write spend rows (%s): keeping them and retrying", reason,
                              extra={"event": "spend_write_failed"})
