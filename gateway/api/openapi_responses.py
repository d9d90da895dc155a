"""What the gateway answers, for the OpenAPI document: error responses, headers, and the bodies of its own routes.

The model routes answer with OpenAI's schemas (openapi_openai.py); this module
adds what OpenAI's spec has no name for (a legacy completions stream chunk, a
base64 embedding, one SSE event) and the bodies of the gateway's own routes
(health, keys, spend), as KeyAdmin, SpendReports, HealthChecker and
Service.readiness build them. Those are closed (`additionalProperties: false`),
so the fuzz test (tests/functional/test_openapi_fuzz.py) fails when an answer
gains a field this description lacks.
"""
from __future__ import annotations

import copy

SCHEMAS_REF = "#/components/schemas/"
ERROR_BODY = {"$ref": SCHEMAS_REF + "ErrorResponse"}


def ref(name: str) -> dict:
    return {"$ref": SCHEMAS_REF + name}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def closed(properties: dict, required: list | tuple | None = None, description: str | None = None) -> dict:
    schema = {"type": "object", "properties": properties, "required": list(required or properties),
              "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


_STRING, _INTEGER, _NUMBER, _BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_COUNT = {"type": "integer", "minimum": 0}
_TIME = {"type": "string", "format": "date-time"}
_OPTIONAL_STRING = {"type": ["string", "null"]}
_OPTIONAL_COUNT = {"type": ["integer", "null"], "minimum": 0}


# --- headers ----------------------------------------------------------------------------------------

def _header(description: str, schema: dict, required: bool = False) -> dict:
    header = {"description": description, "schema": schema}
    if required:
        header["required"] = True
    return header


HEADERS = {
    "XRequestId": _header("The request's id: the client's own `x-request-id` when it sent a well-formed one "
                          "(1-128 of A-Z a-z 0-9 . _ : @ / + = -), else one the gateway made. Also in the "
                          "gateway's logs and spend rows.", _STRING, required=True),
    "RetryAfter": _header("Seconds to wait before trying again: the upstream's value when it gave one, else the "
                          "time left of the rate-limit window or cooldown.", {"type": "integer", "minimum": 1},
                          required=True),
    "XShouldRetry": _header("Whether an SDK should retry this error (OpenAI's SDKs read it).",
                            {"type": "string", "enum": ["true", "false"]}),
    "RateLimitLimitRequests": _header("The key's requests-per-minute limit, where one applies.", _COUNT),
    "RateLimitRemainingRequests": _header("Requests left in the key's current minute.", _COUNT),
    "RateLimitLimitTokens": _header("The key's tokens-per-minute limit, where one applies.", _COUNT),
    "RateLimitRemainingTokens": _header("Tokens left in the key's current minute.", _COUNT),
    "ModelGroup": _header("The model group (configured `model_name`) that answered.", _STRING),
    "ModelId": _header("The id of the deployment that answered.", _STRING),
    "AttemptedRetries": _header("Upstream attempts beyond the first.", _COUNT),
    "AttemptedFallbacks": _header("Fallback model groups tried.", _COUNT),
    "ResponseDuration": _header("Milliseconds from the request's arrival to this answer's head.", _COUNT),
    "OverheadDuration": _header("Of those, the milliseconds spent in the gateway rather than upstream.", _COUNT),
    "ResponseCost": _header("This call's cost in USD (virtual keys only).", _NUMBER),
    "KeySpend": _header("The virtual key's spend in its budget period, in USD, this call included.", _NUMBER),
}

_HEADERS_REF = "#/components/headers/"
REQUEST_ID = {"x-request-id": {"$ref": _HEADERS_REF + "XRequestId"}}
MODEL_CALL_HEADERS = {**REQUEST_ID, **{name: {"$ref": _HEADERS_REF + component} for name, component in (
    ("x-ratelimit-limit-requests", "RateLimitLimitRequests"),
    ("x-ratelimit-remaining-requests", "RateLimitRemainingRequests"),
    ("x-ratelimit-limit-tokens", "RateLimitLimitTokens"),
    ("x-ratelimit-remaining-tokens", "RateLimitRemainingTokens"),
    ("x-litellm-model-group", "ModelGroup"),
    ("x-litellm-model-id", "ModelId"),
    ("x-litellm-attempted-retries", "AttemptedRetries"),
    ("x-litellm-attempted-fallbacks", "AttemptedFallbacks"),
    ("x-litellm-response-duration-ms", "ResponseDuration"),
    ("x-litellm-overhead-duration-ms", "OverheadDuration"),
    ("x-litellm-response-cost", "ResponseCost"),
    ("x-litellm-key-spend", "KeySpend"))}}


# --- error responses ------------------------------------------------------------------------------

# status → (component name, description). The body is always OpenAI's error object.
ERRORS = {
    400: ("BadRequest", "The request is not valid (type `invalid_request_error`): a body that is not a JSON "
                        "object, a field that fails the request schema (`param` names the first one), a field no "
                        "client may set (upstream URLs, credentials, headers or routing: code "
                        "`forbidden_parameter`), an HTTP request that cannot be read (code `bad_request`), or "
                        "the upstream's own refusal of the request, passed through (e.g. code "
                        "`context_length_exceeded`)."),
    401: ("Unauthorized", "No key, an unknown, expired or blocked key (type `authentication_error`, code "
                          "`invalid_api_key`)."),
    403: ("Forbidden", "The key may not do this (type `permission_error`): code `model_not_allowed` for a model "
                       "outside the key's `models`, `master_key_required` for a route only the master key may "
                       "use."),
    404: ("NotFound", "Nothing of that name (type `invalid_request_error`): code `model_not_found` (also for a "
                      "model the key may not see), `key_not_found`, or `not_found` for a URL the gateway does "
                      "not serve; or the upstream's own 404, passed through."),
    408: ("RequestTimeout", "The request's head or body did not arrive in time (code `request_timeout`); the "
                            "connection is closed."),
    413: ("PayloadTooLarge", "The body is over `general_settings.max_request_body_mb` (code "
                             "`request_too_large`)."),
    414: ("UriTooLong", "The request line is too long (code `uri_too_long`)."),
    415: ("UnsupportedMediaType", "The body is not sent as `application/json` (code `unsupported_media_type`)."),
    422: ("UnprocessableEntity", "The upstream refused the request as unprocessable; its message is passed "
                                "through, credentials removed."),
    429: ("TooManyRequests", "A limit is reached (type `rate_limit_error`): the key's rpm, tpm or parallel "
                            "limit (code `rate_limit_exceeded`), its budget (code `budget_exceeded`: do not "
                            "retry before the budget period ends), or the upstream's rate limit after retries."),
    500: ("InternalError", "A bug of the gateway's (type `api_error`, code `internal_error`); it is logged, and "
                           "the answer never carries a stack trace."),
    502: ("BadGateway", "The upstream failed after retries and fallbacks (type `api_error`): unreachable, a 5xx, "
                        "an answer that is not a valid OpenAI response (code `upstream_error`), or the gateway's "
                        "own upstream credentials refused (code `upstream_auth_error`)."),
    503: ("ServiceUnavailable", "Try again shortly (type `api_error`): every deployment of the model is cooling "
                                "down (code `no_healthy_deployment`), or the key store is unreachable for a key "
                                "not in cache (code `service_unavailable`)."),
    504: ("GatewayTimeout", "The upstream did not answer in time, after retries (code `upstream_timeout`)."),
}

_RETRY_AFTER = {"Retry-After": {"$ref": _HEADERS_REF + "RetryAfter"}}


def error_responses() -> dict:
    """components.responses: one per status, each OpenAI's error body with the headers it always carries."""
    responses = {}
    for status, (name, description) in ERRORS.items():
        headers = {**REQUEST_ID, "x-should-retry": {"$ref": _HEADERS_REF + "XShouldRetry"}}
        if status in (429, 503):
            headers.update(_RETRY_AFTER)
        responses[name] = {"description": description, "headers": headers,
                           "content": {"application/json": {"schema": ERROR_BODY}}}
    return responses


def error_ref(status: int, description: str | None = None) -> dict:
    reference = {"$ref": "#/components/responses/" + ERRORS[status][0]}
    if description:
        reference["description"] = description    # OpenAPI 3.1: a Reference's description replaces the target's
    return reference


# --- model routes: what OpenAI's spec has no name for -----------------------------------------------

def model_call_schemas(openai: dict) -> dict:
    """Relaxed copies of two OpenAI schemas, for answers OpenAI itself gives, and one SSE event per stream."""
    legacy_chunk = copy.deepcopy(openai["CreateCompletionResponse"])
    legacy_chunk["description"] = ("One event of a legacy completions stream: a completion whose choices carry "
                                   "`finish_reason: null` until the last one.")
    choice = legacy_chunk["properties"]["choices"]["items"]["properties"]
    choice["finish_reason"] = nullable(choice["finish_reason"])

    base64_response = copy.deepcopy(openai["CreateEmbeddingResponse"])
    base64_response["description"] = "Embeddings asked for with `encoding_format: \"base64\"`."
    base64_embedding = copy.deepcopy(openai["Embedding"])
    base64_embedding["properties"]["embedding"] = {
        "type": "string", "contentEncoding": "base64",
        "description": "The embedding vector: little-endian 32-bit floats, base64-encoded."}
    base64_response["properties"]["data"]["items"] = base64_embedding
    return {"CreateCompletionStreamChunk": legacy_chunk, "CreateEmbeddingResponseBase64": base64_response,
            "ChatCompletionStreamEvent": _sse_event("CreateChatCompletionStreamResponse"),
            "CompletionStreamEvent": _sse_event("CreateCompletionStreamChunk")}


def _sse_event(chunk: str) -> dict:
    """One server-sent event of a stream, as {data, event?, id?, retry?} (3.2's `itemSchema` reading)."""
    return {
        "type": "object",
        "description": "One server-sent event: `data:` carries a chunk as JSON; the stream ends with `data: "
                       "[DONE]`, or, when the upstream fails after the first chunk, with one error event "
                       "(`{\"error\": {..., \"type\": \"api_error\", \"code\": \"upstream_error\" | "
                       "\"upstream_timeout\"}}`) and no `[DONE]`.",
        "required": ["data"],
        "properties": {
            "data": {"anyOf": [
                {"const": "[DONE]"},
                {"type": "string", "not": {"const": "[DONE]"}, "contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [ref(chunk), ERROR_BODY]}}]},
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"}}}


# --- the gateway's own routes ----------------------------------------------------------------------

_KEY_FIELDS = {
    "key_name": {"type": "string", "description": "`sk-...` and the key's last 4 characters: enough to "
                                                  "recognise it, never to use it."},
    "token": {"type": "string", "pattern": "^[0-9a-f]{64}$",
              "description": "The key's SHA-256 (what the gateway stores): names the key in admin calls."},
    "key_alias": _OPTIONAL_STRING,
    "expires": {"type": ["string", "null"], "format": "date-time"},
    "models": {"type": "array", "items": _STRING, "description": "Model groups the key may use; empty: all."},
    "max_budget": {"type": ["number", "null"], "minimum": 0},
    "budget_duration": _OPTIONAL_STRING,
    "budget_reset_at": {"type": ["string", "null"], "format": "date-time"},
    "spend": {"type": "number", "description": "USD spent in the current budget period."},
    "rpm_limit": _OPTIONAL_COUNT,
    "tpm_limit": _OPTIONAL_COUNT,
    "max_parallel_requests": _OPTIONAL_COUNT,
    "model_rpm_limit": {"type": "object", "additionalProperties": _COUNT},
    "model_tpm_limit": {"type": "object", "additionalProperties": _COUNT},
    "metadata": {"type": "object"},
    "user_id": _OPTIONAL_STRING,
    "team_id": _OPTIONAL_STRING,
    "blocked": _BOOLEAN,
    "created_at": _TIME,
    "updated_at": _TIME,
}
_PLAINTEXT = {"type": "string", "description": "The key itself: shown this once, stored only as its SHA-256."}

_SPEND_ROW = closed({
    "request_id": _STRING,
    "api_key": {"type": ["string", "null"], "description": "The key's token; null for the master key."},
    "key_alias": _OPTIONAL_STRING, "user": _OPTIONAL_STRING, "team_id": _OPTIONAL_STRING,
    "model_group": _STRING,
    "model_id": {"type": "string", "description": "The deployment that answered; empty when none was called."},
    "prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT,
    "spend": _NUMBER, "status": _INTEGER, "latency_ms": _COUNT, "startTime": _TIME, "endTime": _TIME})

_TOTALS = {"spend": _NUMBER, "requests": _COUNT, "prompt_tokens": _COUNT, "completion_tokens": _COUNT}
_DAY = {"group_by_day": {"type": "string", "format": "date"}}

_ENDPOINT = {"model_name": _STRING, "model": {"type": "string", "description": "<provider>/<upstream model>"},
             "model_id": _STRING,
             "api_base": {"type": ["string", "null"], "description": "Without credentials, query or fragment."}}

OWN_SCHEMAS = {
    "KeyInfo": closed(_KEY_FIELDS, description="A virtual key's settings and spend (never its plaintext)."),
    "GeneratedKey": closed({"key": _PLAINTEXT, **_KEY_FIELDS}, description="A new key, or a new plaintext "
                                                                           "for an existing one."),
    "DeletedKeys": closed({"deleted_keys": {"type": "array", "items": _STRING,
                                            "description": "The keys and aliases deleted, as named."}}),
    "KeyInfoResponse": closed({"key": {"type": "string", "description": "The key's token."},
                               "info": ref("KeyInfo")}),
    "KeyList": closed({
        "keys": {"type": "array", "description": "Tokens; whole keys with `return_full_object=true`.",
                 "items": {"anyOf": [_STRING, ref("KeyInfo")]}},
        "total_count": _COUNT, "current_page": {"type": "integer", "minimum": 1}, "total_pages": _COUNT}),
    "SpendLog": _SPEND_ROW,
    "SpendLogPage": closed({"data": {"type": "array", "items": ref("SpendLog")}, "total": _COUNT,
                            "page": {"type": "integer", "minimum": 1},
                            "page_size": {"type": "integer", "minimum": 1}, "total_pages": _COUNT}),
    "GlobalSpend": closed({**_TOTALS, "max_budget": {"type": "null"}}),
    "SpendReportRow": {"oneOf": [
        closed({**_DAY, "model": _STRING, **_TOTALS, "total_tokens": _COUNT}),
        closed({**_DAY, "api_key": {"type": ["string", "null"], "description": "Token; null for the master key."},
                "key_alias": _OPTIONAL_STRING, **_TOTALS, "total_tokens": _COUNT})]},
    "HealthReport": closed({
        "healthy_endpoints": {"type": "array", "items": closed(_ENDPOINT)},
        "unhealthy_endpoints": {"type": "array", "items": closed({**_ENDPOINT, "error": {
            "type": "string", "description": "Why the probe failed: the adapter's message, credentials removed."}})},
        "healthy_count": _COUNT, "unhealthy_count": _COUNT}),
    "Liveness": closed({"status": {"const": "alive"}}),
    "Readiness": closed({
        "status": {"enum": ["ready", "not ready"]},
        "checks": {"type": "object", "additionalProperties": _STRING,
                   "description": "Each check (config, router state, limits, database, Redis) and `ok` or what "
                                  "is wrong."},
        "state_backend": {"type": "string", "description": "Where router state lives: `shared-memory` (the "
                                                           "instance's workers), `process-local` or `redis`."}}),
}
