"""Pure choice of one deployment among candidates, by routing strategy (no I/O, no clocks).

Every strategy takes the candidates with their shared counters (`EntityStats`,
added up over workers and instances) and returns one; cooling and capped
deployments were removed before.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from ..types import Deployment, EntityStats

Candidates = Sequence[tuple[Deployment, EntityStats]]
LATENCY_BUFFER = 0.10    # deployments within 10% of the fastest share its traffic


def simple_shuffle(candidates: Candidates, rng: random.Random, stream: bool) -> Deployment:
    """Weighted random pick, LiteLLM's default: by `weight` if any is set, else by `rpm`, else `tpm`."""
    if len(candidates) == 1:
        return candidates[0][0]
    deployments = [d for d, _ in candidates]
    if any(d.weight is not None for d in deployments):
        weights = [d.weight or 1.0 for d in deployments]
    elif any(d.rpm for d in deployments):
        weights = [d.rpm or 0 for d in deployments]
    elif any(d.tpm for d in deployments):
        weights = [d.tpm or 0 for d in deployments]
    else:
        return rng.choice(deployments)
    return rng.choices(deployments, weights=weights)[0]


def least_busy(candidates: Candidates, rng: random.Random, stream: bool) -> Deployment:
    """Fewest requests in flight (streams count until they end), ties at random."""
    fewest = min(s.in_flight for _, s in candidates)
    return rng.choice([d for d, s in candidates if s.in_flight == fewest])


def lowest_latency(candidates: Candidates, rng: random.Random, stream: bool) -> Deployment:
    """Fastest moving average (time to first token for streams); unmeasured ones first, to measure them."""
    def latency(stats: EntityStats) -> float | None:
        first, second = (stats.ttft, stats.latency) if stream else (stats.latency, stats.ttft)
        return first if first is not None else second
    measured = [(d, latency(s)) for d, s in candidates]
    unmeasured = [d for d, value in measured if value is None]
    if unmeasured:
        return rng.choice(unmeasured)
    best = min(value for _, value in measured)
    return rng.choice([d for d, value in measured if value <= best * (1 + LATENCY_BUFFER)])


def lowest_usage(candidates: Candidates, rng: random.Random, stream: bool) -> Deployment:
    """Lowest share of its `rpm`/`tpm` used this minute (no limit: no share), ties at random."""
    shares = [(d, usage_share(d, s)) for d, s in candidates]
    lowest = min(share for _, share in shares)
    return rng.choice([d for d, share in shares if share == lowest])


def usage_share(deployment: Deployment, stats: EntityStats) -> float:
    share = 0.0
    if deployment.rpm:
        share = stats.requests / deployment.rpm
    if deployment.tpm:
        share = max(share, stats.tokens / deployment.tpm)
    return share


def at_cap(deployment: Deployment, stats: EntityStats) -> bool:
    """This minute's requests or tokens reached the deployment's `rpm` / `tpm`."""
    return ((deployment.rpm is not None and stats.requests >= deployment.rpm)
            or (deployment.tpm is not None and stats.tokens >= deployment.tpm))


STRATEGIES: dict[str, Callable[[Candidates, random.Random, bool], Deployment]] = {
    "simple-shuffle": simple_shuffle,
    "least-busy": least_busy,
    "latency-based-routing": lowest_latency,
    "usage-based-routing": lowest_usage,
}
