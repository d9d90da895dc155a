"""Key limits exact across the workers of one instance: rows in the router-state segment, under its lock.

Reserve-then-settle is one check-and-increment under the segment's fcntl
lock, so two workers can never both take the last request of a minute. What
live requests hold (in flight, reserved tokens and cost) is kept per worker,
so the master's `release_worker` frees a dead worker's reservations with its
slot. Rows are found by a hash of the name with linear probing; when the
probes find no free row, the idle row used longest ago is reused (its spend is
seeded again from the database the next time its key calls).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from ..errors import ServiceUnavailable
from ..types import Ask, Verdict
from .shared_memory import (LIMIT_HOLD, LIMIT_HOLD_BASE, LIMIT_ROW, LIMIT_ROW_BASE, LIMIT_ROWS)

PROBES = 256         # rows looked at for a name before an idle one is reused
IDLE = 120.0         # seconds unused before a row with nothing in flight may go to another name
_NEVER = -1.0        # period of a row that has not met its key's budget period yet
# row words
_HASH, _MINUTE, _REQUESTS, _TOKENS, _PERIOD, _SPEND, _USED = range(7)
# hold words (per worker)
_FLYING, _HELD_TOKENS, _HELD_COST = range(3)


class MemoryLimits:
    """The embedded LimitState (see types.LimitState); `lease` ids are not needed: holds die with workers."""

    def __init__(self, words: memoryview, floats: memoryview, locked, slot: int, slot_high_word: int):
        self._words, self._floats, self._locked = words, floats, locked
        self._own_holds = LIMIT_HOLD_BASE + slot * LIMIT_ROWS * LIMIT_HOLD
        self._slot_high = slot_high_word
        self._rows: dict[str, int] = {}

    def reserve(self, asks: Sequence[Ask], now: float, lease: str = "", lease_until: float = 0.0) -> Verdict:
        minute = int(now // 60)
        with self._locked():
            rows = [self._row(ask, now, minute) for ask in asks]
            held = [self._held(row) for row in rows]
            for ask, row, hold in zip(asks, rows, held, strict=True):
                refused = self._refusal(ask, row, hold)
                if refused:
                    retry_after = 60 - now % 60 if refused in ("rpm", "tpm") else 1.0 if refused == "parallel" else 0.0
                    return self._verdict(False, refused, ask.name, retry_after, asks[0], rows[0], held[0])
            words, floats = self._words, self._floats
            for ask, row in zip(asks, rows, strict=True):
                words[row + _REQUESTS] += 1
                hold = self._own_holds + (row - LIMIT_ROW_BASE) // LIMIT_ROW * LIMIT_HOLD
                words[hold + _FLYING] += 1
                words[hold + _HELD_TOKENS] += ask.tokens
                floats[hold + _HELD_COST] += ask.cost
            first = held[0]
            return self._verdict(True, None, None, 0.0, asks[0], rows[0],
                                 (first[0] + 1, first[1] + asks[0].tokens, first[2] + asks[0].cost))

    def settle(self, asks: Sequence[Ask], lease: str, tokens: int, cost: float, now: float) -> float:
        minute = int(now // 60)
        words, floats = self._words, self._floats
        spend = 0.0
        with self._locked():
            for index, ask in enumerate(asks):
                row = self._row(ask, now, minute)
                hold = self._own_holds + (row - LIMIT_ROW_BASE) // LIMIT_ROW * LIMIT_HOLD
                words[hold + _FLYING] = max(0, words[hold + _FLYING] - 1)
                words[hold + _HELD_TOKENS] = max(0, words[hold + _HELD_TOKENS] - ask.tokens)
                floats[hold + _HELD_COST] = max(0.0, floats[hold + _HELD_COST] - ask.cost)
                words[row + _TOKENS] += max(0, tokens)
                if floats[row + _PERIOD] == ask.period:
                    floats[row + _SPEND] += cost
                if index == 0:
                    spend = floats[row + _SPEND]
        return spend

    # --- internals (all under the lock) ------------------------------------------------------

    def _refusal(self, ask: Ask, row: int, hold: tuple[int, int, float]) -> str | None:
        words, floats = self._words, self._floats
        flying, held_tokens, held_cost = hold
        if ask.rpm is not None and words[row + _REQUESTS] + 1 > ask.rpm:
            return "rpm"
        used = words[row + _TOKENS]
        if ask.tpm is not None and not (used < ask.tpm and (used + held_tokens + ask.tokens <= ask.tpm
                                                            or flying == 0)):
            return "tpm"
        if ask.parallel is not None and flying + 1 > ask.parallel:
            return "parallel"
        spend = floats[row + _SPEND]
        if ask.budget is not None and not (spend < ask.budget and (spend + held_cost + ask.cost <= ask.budget
                                                                   or flying == 0)):
            return "budget"
        return None

    def _verdict(self, ok: bool, refused_by, name, retry_after: float, ask: Ask, row: int,
                 hold: tuple[int, int, float]) -> Verdict:
        words = self._words
        remaining_requests = None if ask.rpm is None else max(0, ask.rpm - words[row + _REQUESTS])
        remaining_tokens = None if ask.tpm is None else max(0, ask.tpm - words[row + _TOKENS] - hold[1])
        return Verdict(ok, refused_by, name, retry_after, remaining_requests, remaining_tokens,
                       self._floats[row + _SPEND])

    def _held(self, row: int) -> tuple[int, int, float]:
        """What live requests of every worker hold on this row."""
        words, floats = self._words, self._floats
        index = (row - LIMIT_ROW_BASE) // LIMIT_ROW
        flying = tokens = 0
        cost = 0.0
        for slot in range(words[self._slot_high]):
            at = LIMIT_HOLD_BASE + (slot * LIMIT_ROWS + index) * LIMIT_HOLD
            flying += words[at + _FLYING]
            tokens += words[at + _HELD_TOKENS]
            cost += floats[at + _HELD_COST]
        return flying, tokens, cost

    def _row(self, ask: Ask, now: float, minute: int) -> int:
        """The row (word offset) for the ask's name, rolled over to this minute and the ask's period."""
        key = _hash(ask.name)
        words, floats = self._words, self._floats
        index = self._rows.get(ask.name)
        if index is None or words[LIMIT_ROW_BASE + index * LIMIT_ROW] != key:   # another worker reused it
            index = self._find(key, now)
            if len(self._rows) > 2 * LIMIT_ROWS:
                self._rows.clear()
            self._rows[ask.name] = index
        row = LIMIT_ROW_BASE + index * LIMIT_ROW
        floats[row + _USED] = now
        if minute > words[row + _MINUTE]:           # minutes and periods only move forward
            words[row + _MINUTE], words[row + _REQUESTS], words[row + _TOKENS] = minute, 0, 0
        if ask.period > floats[row + _PERIOD]:
            floats[row + _PERIOD], floats[row + _SPEND] = ask.period, ask.base_spend
        return row

    def _find(self, key: int, now: float) -> int:
        words, floats = self._words, self._floats
        start = key % LIMIT_ROWS
        reusable = None
        for probe in range(PROBES):
            index = (start + probe) % LIMIT_ROWS
            row = LIMIT_ROW_BASE + index * LIMIT_ROW
            held = words[row + _HASH]
            if held == key:
                return index
            if held == 0:
                return self._claim(index, key)
            used = floats[row + _USED]
            if used < now - IDLE and (reusable is None or used < reusable[1]) and self._held(row)[0] == 0:
                reusable = (index, used)
        if reusable is None:
            raise ServiceUnavailable("the gateway is counting too many keys at once; try again shortly")
        return self._claim(reusable[0], key)

    def _claim(self, index: int, key: int) -> int:
        row = LIMIT_ROW_BASE + index * LIMIT_ROW
        self._words[row:row + LIMIT_ROW] = _EMPTY_ROW
        self._floats[row + _PERIOD] = _NEVER
        self._words[row + _HASH] = key
        return index


_EMPTY_ROW = memoryview(bytes(8 * LIMIT_ROW)).cast("q")


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True) or 1
