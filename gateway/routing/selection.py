"""Pure choice of one deployment among candidates (no I/O, no clocks)."""
from __future__ import annotations

import random
from typing import Sequence

from ..types import Deployment


def simple_shuffle(candidates: Sequence[Deployment], rng: random.Random) -> Deployment:
    """Weighted random pick, LiteLLM's default `simple-shuffle`."""
    if len(candidates) == 1:
        return candidates[0]
    return rng.choices(candidates, weights=[d.weight for d in candidates])[0]
