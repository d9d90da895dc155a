"""The one retry table and the one backoff rule of the gateway."""
from __future__ import annotations

from ..errors import GatewayError, UpstreamAuthFailed

BACKOFF_BASE = 0.25      # seconds before the 2nd attempt on the same deployment
BACKOFF_CAP = 2.0
RETRY_AFTER_CAP = 5.0    # an upstream asking for longer is not waited for inside a request


def is_retryable(error: GatewayError) -> bool:
    """Worth another attempt somewhere in the group (client errors never are)."""
    return error.retryable or isinstance(error, UpstreamAuthFailed)


def retry_same_deployment(error: GatewayError) -> bool:
    """Upstream 401/403 will not heal by asking the same deployment again."""
    return not isinstance(error, UpstreamAuthFailed)


def backoff(retry_number: int, error: GatewayError) -> float | None:
    """Seconds to wait before retrying the same deployment; None = do not retry it."""
    if error.retry_after is not None:
        return error.retry_after if error.retry_after <= RETRY_AFTER_CAP else None
    return min(BACKOFF_BASE * 2 ** retry_number, BACKOFF_CAP)
