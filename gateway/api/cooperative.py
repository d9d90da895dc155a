"""Let CPU-bound request work give the event loop a turn, so one big body never stalls a worker.

A gevent worker runs every request on one thread: a loop over a 10 MB body
that never yields holds up every stream and probe of that worker. A Pacer
counts units of work and, past a budget of about 10 ms, yields once, with
gevent.idle(): sleep(0) would run ready greenlets but not poll sockets, so
streams and probes would still wait.
"""
from __future__ import annotations

import time

import gevent

SLICE = 0.01          # seconds of CPU between yields
CHECK_EVERY = 2048    # units of work between clock reads (a clock read costs ~50 ns)


class Pacer:
    __slots__ = ("_units", "_since")

    def __init__(self) -> None:
        self._units = 0
        self._since = 0.0   # set at the first check: most requests never get that far

    def rest(self) -> None:
        """Yield now: before a step that cannot yield itself (parsing a large body)."""
        gevent.idle()
        self._units = 0
        self._since = time.monotonic()

    def tick(self, units: int = 1) -> None:
        self._units += units
        if self._units < CHECK_EVERY:
            return
        self._units = 0
        now = time.monotonic()
        if not self._since:
            self._since = now
        elif now - self._since >= SLICE:
            self.rest()
