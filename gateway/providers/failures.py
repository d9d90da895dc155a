"""One table from what an upstream said when it refused to the GatewayError a client gets.

Each provider reads its own error body into an UpstreamError (its type names,
its context-window wording); which row of the contract that becomes is decided
here, once, for every provider, so a 529 from Anthropic, a 503 UNAVAILABLE
from Gemini and a Bedrock ServiceUnavailableException cool and retry alike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from ..errors import (RETRY_AFTER_MAX, ContentPolicyViolation, ContextLengthExceeded, GatewayError,
                      UpstreamAuthFailed, UpstreamClientError, UpstreamFailed, UpstreamRateLimited, UpstreamTimeout)

# What kind of refusal it was, when the status alone does not say.
AUTH = "auth"                    # the gateway's own upstream credentials are wrong
RATE_LIMITED = "rate_limited"
OVERLOADED = "overloaded"        # the upstream is busy: retry elsewhere or later
CONTEXT_LENGTH = "context_length"
CONTENT_POLICY = "content_policy"
SERVER = "server"                # the upstream's own failure (its text is never echoed)
TIMEOUT = "timeout"

_PASSED_THROUGH_STATUSES = (400, 404, 422)
MAX_MESSAGE = 2000


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """What an upstream said when it refused, in the provider's own words."""
    status: int                  # HTTP status (in a stream: the status the error event stands for)
    message: str = ""
    kind: str | None = None      # one of the constants above; None: the status decides
    code: str | None = None      # passed through to the client with 400/404/422
    type: str | None = None
    param: str | None = None
    retry_after: float | None = None   # when the body says how long to wait (Google's RetryInfo); else headers


class StreamFailure(Exception):
    """An error event inside a stream, raised by a translator; the adapter turns it into a GatewayError."""

    def __init__(self, error: UpstreamError):
        super().__init__(error.message)
        self.error = error


def gateway_error(error: UpstreamError, headers, where: str, redact) -> GatewayError:
    """The GatewayError for `error`; `headers` (the upstream's) may carry Retry-After."""
    status, kind = error.status, error.kind
    wait = error.retry_after if error.retry_after is not None else retry_after(headers)
    message = redact(error.message or f"the upstream answered HTTP {status}")[:MAX_MESSAGE]
    if kind == AUTH or (kind is None and status in (401, 403)):
        return UpstreamAuthFailed(f"the upstream rejected the gateway's credentials ({where})")
    if kind == RATE_LIMITED or (kind is None and status == 429):
        return UpstreamRateLimited(f"the upstream is rate limiting: {message}", retry_after=wait)
    if kind == OVERLOADED:
        return UpstreamFailed(f"the upstream is overloaded (HTTP {status}, {where})", retry_after=wait)
    if kind == CONTEXT_LENGTH:
        return ContextLengthExceeded(message, param="messages")
    if kind == CONTENT_POLICY:
        return ContentPolicyViolation(message)
    if kind is None and status in _PASSED_THROUGH_STATUSES:
        return UpstreamClientError(message, status=status, param=error.param, code=error.code, type=error.type)
    if kind == TIMEOUT or (kind is None and status == 408):
        return UpstreamTimeout(f"the upstream timed out ({where})")
    if kind == SERVER or status >= 500 or status == 409:
        # Never echoed: 5xx text carries stack traces, file paths and host names.
        return UpstreamFailed(f"the upstream failed with HTTP {status} ({where})", retry_after=wait)
    failed = UpstreamFailed(f"the upstream answered HTTP {status} ({where})")
    failed.retryable = False
    return failed


def retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), within [0, 300].

    A value that is not a finite number or a date is ignored, as if absent.
    """
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            seconds = _seconds_until(value) if scale == 1.0 else None
        if seconds is not None and seconds == seconds and seconds not in (float("inf"), float("-inf")):
            return min(max(0.0, seconds), RETRY_AFTER_MAX)
    return None


def _seconds_until(http_date: str) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp() - time.time()


def has_signal(message: str, signals) -> bool:
    """Does an upstream message carry one of a provider's documented wordings (compared lower-case)?"""
    lowered = message.lower()
    return any(signal in lowered for signal in signals)
