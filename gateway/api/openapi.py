"""GET /openapi.json: an OpenAPI 3.1 description of the routes this app serves, built from the request schemas.

Request bodies and query parameters are generated (apispec + openapi_fields.py)
from the very marshmallow schemas the views validate with, so the two cannot
drift; answers come from OpenAI's schemas (openapi_openai.py) and ours
(openapi_responses.py). Paths come from the app's URL map: a route is described
only if the app serves it, and every route the app serves has an entry in
OPENAI_ROUTES or GATEWAY_ROUTES (tests/unit/test_openapi_document.py fails
otherwise). The document is built on first use in each worker and served as
cached bytes, without auth.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import orjson
from apispec import APISpec
from flask import Blueprint, Flask, Response, current_app
from marshmallow import Schema

from . import admin_schemas as admin
from . import schemas as model
from .openapi_fields import plugin as marshmallow_plugin
from .openapi_fields import teach
from .openapi_openai import schemas as openai_schemas
from .openapi_rules import keywords_for
from .openapi_responses import (HEADERS, MODEL_CALL_HEADERS, OWN_SCHEMAS, REQUEST_ID, error_ref,
                                error_responses, model_call_schemas, ref)

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
_EXTENSION = "openapi"
_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")   # werkzeug's `<converter:name>`


@bp.get("/openapi.json")
def document():
    body = current_app.extensions.get(_EXTENSION)
    if body is None:   # two requests racing here both build it: harmless, and only once per worker
        body = current_app.extensions[_EXTENSION] = orjson.dumps(build_document(current_app))
    return Response(body, mimetype="application/json")


# --- what each route takes and answers -----------------------------------------------------------

COMMON = (400, 408, 414, 500)       # any route: an unreadable request, a slow client, a long URL, a bug
MODEL_CALL = (*COMMON, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504)
KEY_READ = (*COMMON, 401, 503)      # the key is checked against the store, which may be down
MASTER = (*COMMON, 401, 403, 503)
MASTER_BODY = (*MASTER, 413, 415)

AUTH = {
    "key": [{"bearerAuth": []}, {"apiKeyHeader": []}, {"xApiKeyHeader": []}],
    "master": [{"bearerAuth": []}, {"apiKeyHeader": []}, {"xApiKeyHeader": []}],
    "none": [],
    "metrics": [{}, {"bearerAuth": []}, {"apiKeyHeader": []}, {"xApiKeyHeader": []}],
}


@dataclass(frozen=True)
class Route:
    operation_id: str
    summary: str
    tag: str
    auth: str                           # a key of AUTH
    ok: dict                            # the 200 response object
    errors: tuple[int, ...]
    body: type[Schema] | None = None    # the JSON body the view validates with
    body_required: bool = True
    query: type[Schema] | None = None   # the query string the view validates with
    description: str = ""
    extra: tuple[tuple[int, dict], ...] = ()   # other answers: (status, response object)
    notes: tuple[tuple[int, str], ...] = ()    # route-specific wording of shared error responses


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    return {"description": description, "headers": headers or REQUEST_ID,
            "content": {"application/json": {"schema": schema}}}


def _model_call(schema: dict, stream_event: str | None, description: str) -> dict:
    answer = _json(schema, description, MODEL_CALL_HEADERS)
    if stream_event:
        answer["content"]["text/event-stream"] = {"schema": ref(stream_event)}
    return answer


_STREAM = ("With `\"stream\": true` the answer is server-sent events (`text/event-stream`), one chunk per "
           "event, ending with `data: [DONE]`; the schema given for that media type describes one event. "
           "Every field of the request schema is checked; other top-level fields are vendor extras, "
           "forwarded only to OpenAI-compatible upstreams.")

# OpenAI's routes, served under /v1 and at the root. Keyed by the rule without /v1.
OPENAI_ROUTES = {
    ("POST", "/chat/completions"): Route(
        "createChatCompletion", "Create a chat completion", "Model calls", "key",
        _model_call(ref("CreateChatCompletionResponse"), "ChatCompletionStreamEvent",
                    "A chat completion, or its chunks as server-sent events when `stream` is true."),
        MODEL_CALL, body=model.ChatCompletionSchema, description=_STREAM,
        notes=((404, "No model of that name the key may use (`model_not_found`), or the upstream's 404."),)),
    ("POST", "/completions"): Route(
        "createCompletion", "Create a completion (legacy)", "Model calls", "key",
        _model_call(ref("CreateCompletionResponse"), "CompletionStreamEvent",
                    "A completion, or its chunks as server-sent events when `stream` is true."),
        MODEL_CALL, body=model.CompletionSchema, description=_STREAM,
        notes=((404, "No model of that name the key may use (`model_not_found`), or the upstream's 404."),)),
    ("POST", "/embeddings"): Route(
        "createEmbedding", "Create embeddings", "Model calls", "key",
        _model_call({"anyOf": [ref("CreateEmbeddingResponse"), ref("CreateEmbeddingResponseBase64")]}, None,
                    "The embeddings (base64 strings with `encoding_format: \"base64\"`)."),
        MODEL_CALL, body=model.EmbeddingSchema,
        notes=((404, "No model of that name the key may use (`model_not_found`), or the upstream's 404."),)),
    ("GET", "/models"): Route(
        "listModels", "List the models this key may use", "Models", "key",
        _json(ref("ListModelsResponse"), "The model groups the key may use."), KEY_READ),
    ("GET", "/models/<path:model_id>"): Route(
        "retrieveModel", "Describe one model", "Models", "key",
        _json(ref("Model"), "The model group."), (*KEY_READ, 404),
        notes=((404, "No model of that name the key may use (`model_not_found`)."),)),
}

_KEY_NOT_FOUND = ((404, "No such key (`key_not_found`)."),)

GATEWAY_ROUTES = {
    ("GET", "/health"): Route(
        "checkDeploymentHealth", "Probe every deployment (master key)", "Health", "master",
        _json(ref("HealthReport"), "Which deployments answered their cheapest call."), MASTER),
    ("GET", "/health/liveliness"): Route(
        "liveliness", "Liveness probe (LiteLLM's spelling)", "Health", "none",
        _json(ref("Liveness"), "The process serves."), COMMON),
    ("GET", "/health/liveness"): Route(
        "liveness", "Liveness probe", "Health", "none", _json(ref("Liveness"), "The process serves."), COMMON),
    ("GET", "/health/readiness"): Route(
        "readiness", "Readiness probe", "Health", "none",
        _json(ref("Readiness"), "Config, storage and (if configured) Redis are usable."), COMMON,
        extra=((503, _json(ref("Readiness"), "A check failed: `checks` says which.",
                           {**REQUEST_ID, "Retry-After": {"$ref": "#/components/headers/RetryAfter"}})),)),
    ("GET", "/metrics"): Route(
        "metrics", "Prometheus metrics", "Metrics", "metrics",
        {"description": "Prometheus text exposition, summed over all workers.", "headers": REQUEST_ID,
         "content": {"text/plain": {"schema": {"type": "string"}}}},
        (*COMMON, 401, 404),
        description="Open unless `general_settings.metrics_token` is set; then it takes that token (or the "
                    "master key) as a bearer token.",
        notes=((401, "`metrics_token` is set and was not presented."),
               (404, "Metrics are off (`general_settings.disable_metrics`)."))),
    ("GET", "/openapi.json"): Route(
        "openapi", "This document", "Document", "none",
        _json({"type": "object", "required": ["openapi", "info", "paths"]}, "The OpenAPI 3.1 document."),
        COMMON),
    ("POST", "/key/generate"): Route(
        "generateKey", "Create a virtual key", "Keys", "master",
        _json(ref("GeneratedKey"), "The new key; its plaintext is shown only here."), MASTER_BODY,
        body=admin.GenerateKey, body_required=False,
        notes=((400, "Invalid settings, or a `key` or `key_alias` another key has (`duplicate_key`)."),)),
    ("POST", "/key/update"): Route(
        "updateKey", "Change a key's settings", "Keys", "master",
        _json(ref("KeyInfo"), "The key as it now is."), (*MASTER_BODY, 404), body=admin.UpdateKey,
        body_required=False, notes=_KEY_NOT_FOUND),
    ("POST", "/key/delete"): Route(
        "deleteKeys", "Delete keys", "Keys", "master",
        _json(ref("DeletedKeys"), "The keys deleted."), (*MASTER_BODY, 404), body=admin.DeleteKeys,
        body_required=False, notes=((404, "None of the keys exists (`key_not_found`)."),)),
    ("GET", "/key/info"): Route(
        "keyInfo", "Describe a key", "Keys", "master",
        _json(ref("KeyInfoResponse"), "The key's settings and spend."), (*MASTER, 404), query=admin.KeyOnly,
        notes=_KEY_NOT_FOUND),
    ("GET", "/key/list"): Route(
        "listKeys", "List keys", "Keys", "master",
        _json(ref("KeyList"), "One page of keys, newest first."), MASTER, query=admin.ListKeys),
    ("POST", "/key/regenerate"): Route(
        "regenerateKey", "Give a key a new plaintext", "Keys", "master",
        _json(ref("GeneratedKey"), "The key with its new plaintext (the old one stops working)."),
        (*MASTER_BODY, 404), body=admin.RegenerateKey, body_required=False, notes=_KEY_NOT_FOUND),
    ("POST", "/key/<path:key>/regenerate"): Route(
        "regenerateKeyAtPath", "Give a key a new plaintext (key in the path)", "Keys", "master",
        _json(ref("GeneratedKey"), "The key with its new plaintext (the old one stops working)."),
        (*MASTER_BODY, 404), body=admin.RegenerateKeyAtPath, body_required=False, notes=_KEY_NOT_FOUND),
    ("POST", "/key/block"): Route(
        "blockKey", "Block a key", "Keys", "master", _json(ref("KeyInfo"), "The key, blocked."),
        (*MASTER_BODY, 404), body=admin.KeyOnly, body_required=False, notes=_KEY_NOT_FOUND),
    ("POST", "/key/unblock"): Route(
        "unblockKey", "Unblock a key", "Keys", "master", _json(ref("KeyInfo"), "The key, unblocked."),
        (*MASTER_BODY, 404), body=admin.KeyOnly, body_required=False, notes=_KEY_NOT_FOUND),
    ("GET", "/spend/logs"): Route(
        "spendLogs", "Spend rows, newest first", "Spend", "master",
        _json({"anyOf": [{"type": "array", "items": ref("SpendLog")}, ref("SpendLogPage")]},
              "Without `page`: the newest rows (up to 1,000) as a list; with it: one page."),
        MASTER, query=admin.SpendLogs),
    ("GET", "/global/spend"): Route(
        "globalSpend", "Total spend", "Spend", "master", _json(ref("GlobalSpend"), "Totals over the filter."),
        MASTER, query=admin.SpendFilters),
    ("GET", "/global/spend/report"): Route(
        "spendReport", "Spend per day and model or key", "Spend", "master",
        _json({"type": "array", "items": ref("SpendReportRow")}, "One row per UTC day and group."),
        MASTER, query=admin.SpendReport),
}

PATH_PARAMETERS = {
    "model_id": "A model group name (`/` allowed, sent as `%2F` or plain).",
    "key": "The key's plaintext (`sk-…`) or its token.",
}

REQUEST_BODIES = {   # component names of the request schemas (others are named after their classes)
    model.ChatCompletionSchema: "CreateChatCompletionRequest",
    model.CompletionSchema: "CreateCompletionRequest",
    model.EmbeddingSchema: "CreateEmbeddingRequest",
    admin.GenerateKey: "GenerateKeyRequest",
    admin.UpdateKey: "UpdateKeyRequest",
    admin.DeleteKeys: "DeleteKeysRequest",
    admin.RegenerateKey: "RegenerateKeyRequest",
    admin.RegenerateKeyAtPath: "RegenerateKeyAtPathRequest",
    admin.KeyOnly: "KeyRequest",
}

DESCRIPTION = """\
Shin Gateway: an OpenAI-compatible LLM gateway. The model routes are served under `/v1` and at the root.

**Auth.** `Authorization: Bearer <key>` (also `api-key: <key>` or `x-api-key: <key>`): the master key may do \
everything; a virtual key (`sk-…`, from `/key/generate`) may call the models it names. Probes, this document and \
(unless a metrics token is set) `/metrics` need no key.

**Errors** are always JSON in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, never an HTML \
page or a stack trace; every 429 and every error 503 carries `Retry-After`. A URL the gateway does not serve \
answers 404 (`not_found`), a method a route does not take 405 (`method_not_allowed`), both in that shape.

**Every answer** carries `x-request-id`; model calls also carry `x-litellm-*` routing headers and, where a key \
limit applies, `x-ratelimit-*` headers. Browsers may call directly: CORS preflights are answered per \
`general_settings.cors_allow_origins`."""

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "The master key or a virtual key."},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "api-key", "description": "As Azure SDKs send it."},
    "xApiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                      "description": "As Anthropic SDKs send it."},
}


# --- building ---------------------------------------------------------------------------------------

def routes() -> dict[tuple[str, str], tuple[Route, str]]:
    """Every described (method, werkzeug rule) → (route, operationId suffix): OpenAI's routes twice."""
    table = {key: (route, "") for key, route in GATEWAY_ROUTES.items()}
    for (method, rule), route in OPENAI_ROUTES.items():
        table[(method, "/v1" + rule)] = (route, "")
        table[(method, rule)] = (route, "AtRoot")
    return table


def served(app: Flask) -> list[tuple[str, str]]:
    """(method, rule) of every route the app serves, bar HEAD and OPTIONS (which Flask adds to every rule)."""
    return [(method, rule.rule) for rule in app.url_map.iter_rules()
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]


def openapi_path(rule: str) -> str:
    """`/v1/models/<path:model_id>` → `/v1/models/{model_id}`."""
    return _RULE_ARGUMENT.sub(r"{\1}", rule)


def build_document(app: Flask) -> dict:
    """The OpenAPI 3.1 document of the routes `app` serves (a route neither table has is left out)."""
    plugin = marshmallow_plugin(REQUEST_BODIES)
    spec = APISpec(title="Shin Gateway", version=_version(), openapi_version=OPENAPI_VERSION, plugins=[plugin],
                   info={"description": DESCRIPTION, "license": {"name": "Apache-2.0",
                                                                 "identifier": "Apache-2.0"}})
    teach(plugin.converter)
    table = routes()
    paths: dict[str, dict] = {}
    for method, rule in served(app):
        if (method, rule) in table:
            route, suffix = table[(method, rule)]
            paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation(route, rule, suffix)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _add_rules(document["components"]["schemas"], plugin.converter.refs)
    return _finish(document)


def _add_rules(components: dict, refs: dict) -> None:
    """Each marshmallow component gets its class's cross-field rules (openapi_rules.py) under `allOf`."""
    for key, name in refs.items():
        rules = keywords_for(key[0])     # apispec keys a component by (schema class, modifiers…)
        if rules:
            components[name]["allOf"] = rules


def _operation(route: Route, rule: str, suffix: str) -> dict:
    operation = {"operationId": route.operation_id + suffix,
                 "summary": route.summary + (" (without /v1)" if suffix else ""), "tags": [route.tag],
                 "security": copy.deepcopy(AUTH[route.auth]), "responses": _responses(route)}
    if route.description:
        operation["description"] = route.description
    parameters = [{"in": "path", "name": name, "required": True, "description": PATH_PARAMETERS[name],
                   "schema": {"type": "string", "minLength": 1}} for name in _RULE_ARGUMENT.findall(rule)]
    if route.query is not None:
        parameters.append({"in": "query", "schema": route.query})   # apispec expands it, one parameter per field
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": route.body_required,
                                    "content": {"application/json": {"schema": route.body}}}
    return operation


def _responses(route: Route) -> dict:
    notes = dict(route.notes)
    responses = {"200": copy.deepcopy(route.ok)}
    for status, answer in route.extra:
        responses[str(status)] = copy.deepcopy(answer)
    for status in sorted(route.errors):
        responses[str(status)] = error_ref(status, notes.get(status))
    return dict(sorted(responses.items()))


def _finish(document: dict) -> dict:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    openai = copy.deepcopy(openai_schemas())
    added = {**openai, **model_call_schemas(openai), **OWN_SCHEMAS}
    clash = sorted(set(added) & set(schemas))
    if clash:
        raise ValueError(f"schema names used twice in the OpenAPI document: {clash}")
    schemas.update(copy.deepcopy(added))
    components["schemas"] = dict(sorted(schemas.items()))
    components["responses"] = error_responses()
    components["headers"] = copy.deepcopy(HEADERS)
    components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    return document


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("shin-gateway")
    except PackageNotFoundError:
        return "0.0.0"
