"""Durations as the peer's key API writes them ("30s", "15m", "24h", "30d", "1w", "1mo") and budget periods."""
from __future__ import annotations

import math
import re

from .types import KeyRecord

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mo|s|m|h|d|w)\s*$")
MAX_SECONDS = 100 * 365 * 86400    # longer would put an expiry or a period end past what dates can show


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError naming the accepted forms for anything else."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration: use a positive number with s, m, h, d, w or mo, "
                         "e.g. \"30d\"")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is too long: a duration is at most 100 years")
    return seconds


def period_start(anchor: float, seconds: float, now: float) -> float:
    """Start of the budget period holding `now`: periods follow one another from `anchor`, every `seconds`.

    Computed, not stored, so every worker and instance agrees on when a
    budget resets without a job that resets it.
    """
    if now < anchor:
        return anchor
    return anchor + math.floor((now - anchor) / seconds) * seconds


def budget_period(key: KeyRecord, now: float) -> tuple[float, float | None, float]:
    """(period start, period end or None, the key's stored spend in that period) at `now`.

    Without `budget_duration` the one endless period starts at `budget_anchor`
    (when a duration was last removed; 0 if it never had one), so counters of
    an old period never carry into it.
    """
    if not key.budget_duration:
        start = key.budget_anchor or 0.0
        return start, None, key.spend if key.spend_period == start else 0.0
    seconds = parse_duration(key.budget_duration)
    start = period_start(key.budget_anchor or key.created_at, seconds, now)
    return start, start + seconds, key.spend if key.spend_period == start else 0.0
