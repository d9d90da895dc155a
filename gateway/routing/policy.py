"""The one retry table and the one backoff rule of the gateway."""
from __future__ import annotations

import random

from ..errors import ContentPolicyViolation, ContextLengthExceeded, GatewayError, UpstreamAuthFailed

BACKOFF_BASE = 0.25      # seconds before the 2nd attempt on the same deployment
BACKOFF_CAP = 2.0


def is_retryable(error: GatewayError) -> bool:
    """Worth another attempt somewhere in the group (client errors never are)."""
    return error.retryable or isinstance(error, UpstreamAuthFailed)


def retry_same_deployment(error: GatewayError) -> bool:
    """Upstream 401/403 will not heal by asking the same deployment again."""
    return not isinstance(error, UpstreamAuthFailed)


def backoff(retry_number: int, error: GatewayError, remaining: float, rng: random.Random) -> float | None:
    """Seconds to wait before retrying the same deployment; None = do not retry it.

    The upstream's Retry-After is honoured whenever it fits in what is left of
    the call's deadline; otherwise exponential backoff with jitter, so that
    workers retrying the same upstream do not do it in step.
    """
    if error.retry_after is not None:
        return error.retry_after if error.retry_after < remaining else None
    delay = min(BACKOFF_BASE * 2 ** retry_number, BACKOFF_CAP) * (0.5 + rng.random() / 2)
    return delay if delay < remaining else None


def fallback_kind(error: GatewayError) -> str | None:
    """Which fallback list an error calls for: "context_window", "content_policy", "general" or none."""
    if isinstance(error, ContextLengthExceeded):
        return "context_window"
    if isinstance(error, ContentPolicyViolation):
        return "content_policy"
    return "general" if is_retryable(error) else None
