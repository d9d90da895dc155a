"""GatewayError tree (status, type, code, param, retry_after) → OpenAI error body.

Every failure a client can see is one of these classes; the API renders them
through a single handler, and the router reads `retryable` / `counts_as_failure`
to decide what to do next. Nothing here knows about Flask or requests.
"""
from __future__ import annotations


RETRY_AFTER_MAX = 300.0  # seconds: no upstream value makes a client wait longer


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code: str | None = "internal_error"
    retryable = False  # may another attempt (same or sibling deployment) succeed?
    counts_as_failure = True  # of the deployment, towards its cooldown (when retryable)
    should_retry_client = None  # value of `x-should-retry`, None = let the client decide
    extra_headers: dict | None = None  # set by the service: which deployments the call tried

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None, status: int | None = None, type: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def headers(self) -> dict:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(min(self.retry_after, RETRY_AFTER_MAX) + 0.999)))
        elif self.status in (429, 503):
            headers["Retry-After"] = "1"  # the contract promises one on every 429 and 503
        if self.should_retry_client is not None:
            headers["x-should-retry"] = "true" if self.should_retry_client else "false"
        if self.extra_headers:
            headers.update(self.extra_headers)
        return headers


# --- the client's own mistakes -------------------------------------------------------------

class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = None
    should_retry_client = False


class ForbiddenParameter(InvalidRequest):
    code = "forbidden_parameter"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class RequestTimeout(InvalidRequest):
    """The client did not send its whole request in time."""
    status = 408
    code = "request_timeout"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"

    def __init__(self):
        super().__init__("The request body is larger than the gateway accepts "
                         "(general_settings.max_request_body_mb).")


class RouteNotFound(InvalidRequest):
    status = 404
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.",
                         param="model")


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    should_retry_client = False


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"
    should_retry_client = False


class AdminOnly(PermissionDenied):
    code = "master_key_required"


class DuplicateKey(InvalidRequest):
    """A key or alias that another virtual key already has."""
    code = "duplicate_key"


class RateLimited(GatewayError):
    """The caller's own key is over its rpm, tpm or parallel limit (not the upstream's)."""
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """Waiting does not help until the budget period ends: SDKs are told not to retry."""
    code = "budget_exceeded"
    should_retry_client = False


# --- upstream failures, as the router and the client see them -------------------------------

class UpstreamClientError(GatewayError):
    """The upstream rejected the request itself (400/404/422): passed through, never retried."""
    type = "invalid_request_error"
    code = None
    should_retry_client = False


class ContextLengthExceeded(UpstreamClientError):
    status = 400
    code = "context_length_exceeded"


class ContentPolicyViolation(UpstreamClientError):
    """The upstream's content filter refused the request (`content_policy_fallbacks` may try another)."""
    status = 400
    code = "content_policy_violation"


class UpstreamRateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class UpstreamFailed(GatewayError):
    """Unreachable, 5xx, or an answer we cannot read."""
    status = 502
    code = "upstream_error"
    retryable = True


class BadUpstreamResponse(UpstreamFailed):
    """An answer that is not a valid OpenAI response: another deployment may answer properly."""


class UpstreamAuthFailed(UpstreamFailed):
    """The gateway's own upstream credentials are wrong: the client cannot fix it."""
    code = "upstream_auth_error"
    should_retry_client = False


class UpstreamCredentialsMissing(UpstreamAuthFailed):
    """The config names a credential the environment lacks: nobody was called, so nothing to cool."""
    counts_as_failure = False


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    retryable = True


class NoHealthyDeployment(GatewayError):
    """Every deployment of a group is cooling down: its fallbacks may still answer."""
    status = 503
    code = "no_healthy_deployment"
    retryable = True


class ServiceUnavailable(GatewayError):
    status = 503
    code = "service_unavailable"


class StorageUnavailable(ServiceUnavailable):
    """The database cannot be reached (or timed out); the caller may try again shortly."""


class KeyNotFound(InvalidRequest):
    """An admin route named a virtual key (or alias) that does not exist."""
    status = 404
    code = "key_not_found"
