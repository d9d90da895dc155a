"""A plain-Python model of the key-limit algorithm, and a seeded random run that holds a LimitState to it.

`LimitModel` is the algorithm of the plan ("LimitState algorithm", with the
clarifications: periods only roll forward, a spent limit refuses even a zero
estimate; and minutes too only roll forward) written as directly as possible:
rows by name, each with its live leases. Every backend must give the same
answers on the same calls; `compare(state, seed)` plays one seeded random
sequence of reserves, settles and clock steps on a fresh model and on `state`
and asserts that every answer agrees.

Costs are multiples of 1/8 and token counts integers, so every sum is exact in
binary floating point and the answers can be compared with `==`.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

from gateway.types import Ask, Verdict


@dataclass
class Row:
    minute: int = -1
    requests: int = 0
    tokens: int = 0
    period: float = -1.0              # never seen a period yet
    spend: float = 0.0
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    leases: dict[str, list] = field(default_factory=dict)    # lease → [until, tokens, cost]


class LimitModel:
    """LimitState by the book. A lease is live while now < its lease_until."""

    def __init__(self):
        self.rows: dict[str, Row] = {}
        self.expired = 0        # leases purged for running out (to tell how much a run tested)

    def reserve(self, asks: Sequence[Ask], now: float, lease: str, lease_until: float) -> Verdict:
        rows = [self._row(ask, now) for ask in asks]
        for ask, row in zip(asks, rows, strict=True):
            refused = _refusal(ask, row)
            if refused:
                retry_after = {"parallel": 1.0, "budget": 0.0}.get(refused, 60 - now % 60)
                return _verdict(False, refused, ask.name, retry_after, asks[0], rows[0])
        for ask, row in zip(asks, rows, strict=True):
            row.requests += 1
            row.reserved_tokens += ask.tokens
            row.reserved_cost += ask.cost
            held = row.leases.setdefault(lease, [lease_until, 0, 0.0])
            held[0] = lease_until
            held[1] += ask.tokens
            held[2] += ask.cost
        return _verdict(True, None, None, 0.0, asks[0], rows[0])

    def settle(self, asks: Sequence[Ask], lease: str, tokens: int, cost: float, now: float) -> float:
        spends = []
        for ask in asks:
            row = self._row(ask, now)
            held = row.leases.pop(lease, None)
            if held is not None:
                row.reserved_tokens = max(0, row.reserved_tokens - held[1])
                row.reserved_cost = max(0.0, row.reserved_cost - held[2])
                if not row.leases:
                    row.reserved_tokens, row.reserved_cost = 0, 0.0
            row.tokens += max(0, tokens)
            if ask.period == row.period:
                row.spend += cost
            spends.append(row.spend)
        return spends[0]

    def _row(self, ask: Ask, now: float) -> Row:
        """The ask's row with its expired leases purged, its minute and period rolled forward."""
        row = self.rows.setdefault(ask.name, Row())
        for lease, (until, tokens, cost) in sorted(row.leases.items(), key=lambda item: (item[1][0], item[0])):
            if until <= now:
                del row.leases[lease]
                self.expired += 1
                row.reserved_tokens = max(0, row.reserved_tokens - tokens)
                row.reserved_cost = max(0.0, row.reserved_cost - cost)
        if not row.leases:
            row.reserved_tokens, row.reserved_cost = 0, 0.0
        minute = int(now // 60)
        if minute > row.minute:
            row.minute, row.requests, row.tokens = minute, 0, 0
        if ask.period > row.period:
            row.period, row.spend = ask.period, ask.base_spend
        return row


def _refusal(ask: Ask, row: Row) -> str | None:
    in_flight = len(row.leases)
    if ask.rpm is not None and row.requests + 1 > ask.rpm:
        return "rpm"
    if ask.tpm is not None and not (row.tokens < ask.tpm and (row.tokens + row.reserved_tokens + ask.tokens <= ask.tpm
                                                              or in_flight == 0)):
        return "tpm"
    if ask.parallel is not None and in_flight + 1 > ask.parallel:
        return "parallel"
    if ask.budget is not None and not (row.spend < ask.budget and (row.spend + row.reserved_cost + ask.cost <= ask.budget
                                                                   or in_flight == 0)):
        return "budget"
    return None


def _verdict(ok: bool, refused_by, name, retry_after: float, ask: Ask, row: Row) -> Verdict:
    return Verdict(ok, refused_by, name, retry_after,
                   None if ask.rpm is None else max(0, ask.rpm - row.requests),
                   None if ask.tpm is None else max(0, ask.tpm - row.tokens - row.reserved_tokens),
                   row.spend)


# --- the seeded random run ---------------------------------------------------------------------

START = 1_700_000_020.0     # 40 s into a minute
ANCHOR = 1_700_000_000.0    # budget periods of the first key start here, every PERIOD seconds
PERIOD = 150.0


def run(state, seed: int, ops: int = 300, *, expiring_leases: bool = True, prefix: str = "key") -> list[tuple]:
    """Play `ops` seeded random operations on `state`; returns what each one answered.

    With expiring_leases (the Redis backend, the model) leases run out 5 to 60 s
    after their reserve and some leases are settled that were never reserved;
    without (the embedded backend, whose holds end with their worker) leases
    never run out and only reserved leases are settled.
    """
    rng = random.Random(seed)
    a, a_model, b, c = f"{prefix}-a", f"{prefix}-a|model", f"{prefix}-b", f"{prefix}-c"
    limits = {  # name → rpm, tpm, parallel, budget, budget period length (None: no budget_duration)
        a: (4, 500, 3, 2.0, PERIOD),
        a_model: (2, 300, None, None, None),
        b: (None, 250, 2, 6.0, None),
        c: (None, None, None, None, None),
    }
    combos = [(a,), (a, a_model), (a_model,), (b,), (c, b), (c,)]
    base_spends: dict[tuple[str, float], float] = {}
    now = START
    outstanding: list[tuple[tuple[Ask, ...], str]] = []
    answers: list[tuple] = []
    for number in range(ops):
        roll = rng.random()
        if roll < 0.5:
            tokens, cost = rng.randrange(0, 200), rng.randrange(0, 5) / 8
            asks = []
            for name in rng.choice(combos):
                rpm, tpm, parallel, budget, length = limits[name]
                period = ANCHOR + math.floor((now - ANCHOR) / length) * length if length else 0.0
                base = base_spends.setdefault((name, period), rng.choice([0.0, 0.25, 1.0, 1.75]))
                asks.append(Ask(name, rpm, tpm, parallel, budget, period, base, tokens, cost))
            lease = f"lease-{seed}-{number}"
            until = now + rng.choice([5.0, 20.0, 60.0]) if expiring_leases else now + 1e9
            verdict = state.reserve(asks, now, lease, until)
            answers.append(("reserve", number, verdict))
            if verdict.ok:
                outstanding.append((tuple(asks), lease))
        elif roll < 0.72 and outstanding:
            asks, lease = outstanding.pop(rng.randrange(len(outstanding)))
            tokens, cost = rng.randrange(0, 250), rng.randrange(0, 6) / 8
            answers.append(("settle", number, state.settle(asks, lease, tokens, cost, now)))
        elif roll < 0.76 and expiring_leases:
            name = rng.choice(list(limits))
            ask = Ask(name, None, None, None, None, 0.0, 0.0, 0, 0.0)
            answers.append(("settle unknown", number, state.settle([ask], f"never-{number}", 10, 0.125, now)))
        else:
            now += rng.choice([0.0, 0.5, 3.0, 10.0, 25.0, 61.0])
    return answers


def compare(state, seed: int, ops: int = 300, *, expiring_leases: bool = True, prefix: str = "key") -> int:
    """Assert that `state` answers the seeded run exactly as a fresh LimitModel; returns how many were granted."""
    expected = run(LimitModel(), seed, ops, expiring_leases=expiring_leases, prefix=prefix)
    actual = run(state, seed, ops, expiring_leases=expiring_leases, prefix=prefix)
    for want, got in zip(expected, actual, strict=True):
        assert got == want, f"seed {seed}, operation {want[1]}: expected {want[2]}, got {got[2]}"
    return sum(1 for kind, _, answer in expected if kind == "reserve" and answer.ok)
