"""OpenAI's OpenAPI spec as JSON-Schema validators, and a checker for whole HTTP exchanges.

The spec (tests/reference/openai-openapi.yaml, vendored) is loaded once per process with
the C YAML loader, its OpenAPI-3.0 `nullable: true` keywords are rewritten to
`anyOf: [..., {"type": "null"}]` (a 2020-12 validator ignores `nullable`, and
real OpenAI chunks carry `finish_reason: null`, `logprobs: null`), and the
whole document is registered with `referencing` under `urn:spec`.

Two relaxed schemas are added, both for things OpenAI itself sends:
  CreateCompletionStreamChunk      legacy /completions stream chunks carry
                                   `finish_reason: null` until the last one
  CreateEmbeddingResponseBase64    with `encoding_format: "base64"` each
                                   `embedding` is a base64 string

`validate(schema_name, instance)` raises SpecViolation (an AssertionError) with
a readable message. `check_exchange(...)` picks the schema from the route and
validates a recorded response: JSON body, every SSE chunk, every error body.
`record_httpx(sink)` tees every response body read through httpx (the OpenAI
SDK, LangChain and LlamaIndex all use it) into `sink`, so the wire itself is
validated, not the SDK's lenient parse of it.

This module imports nothing from the test package, so a subprocess can load it
from its path (the guide examples do).
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from urllib.parse import urlsplit

SPEC_PATH = Path(__file__).resolve().parents[1] / "reference" / "openai-openapi.yaml"
SPEC_URI = "urn:spec"


class SpecViolation(AssertionError):
    pass


def fix_nullable(node):
    """OpenAPI 3.0 `nullable: true` → JSON Schema `anyOf: [schema, {type: null}]`, recursively."""
    if isinstance(node, dict):
        node = {key: fix_nullable(value) for key, value in node.items()}
        return {"anyOf": [node, {"type": "null"}]} if node.pop("nullable", None) is True else node
    if isinstance(node, list):
        return [fix_nullable(item) for item in node]
    return node


def _relaxed_schemas(schemas: dict) -> dict:
    legacy_chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish = legacy_chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    legacy_chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {
        "anyOf": [finish, {"type": "null"}]}

    base64_embedding = copy.deepcopy(schemas["Embedding"])
    base64_embedding["properties"]["embedding"] = {"type": "string", "contentEncoding": "base64"}
    base64_response = copy.deepcopy(schemas["CreateEmbeddingResponse"])
    base64_response["properties"]["data"]["items"] = base64_embedding
    return {"CreateCompletionStreamChunk": legacy_chunk, "CreateEmbeddingResponseBase64": base64_response}


@functools.cache
def _registry():
    import yaml
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    if not SPEC_PATH.is_file() or SPEC_PATH.stat().st_size == 0:
        raise FileNotFoundError(f"OpenAI spec missing or empty: {SPEC_PATH} (vendored test data, see tests/reference)")
    with SPEC_PATH.open("rb") as handle:
        spec = fix_nullable(yaml.load(handle, Loader=yaml.CSafeLoader))
    schemas = spec["components"]["schemas"]
    schemas.update(_relaxed_schemas(schemas))
    return Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec)), frozenset(schemas)


@functools.cache
def _validator(schema_name: str):
    from jsonschema import Draft202012Validator

    registry, names = _registry()
    if schema_name not in names:
        raise KeyError(f"no schema {schema_name!r} in {SPEC_PATH.name}")
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}, registry=registry)


def validate(schema_name: str, instance) -> None:
    """Raise SpecViolation naming the schema, the failing JSON path and the instance."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator(schema_name).iter_errors(instance))
    if error is None:
        return
    where = error.json_path
    shown = json.dumps(instance, ensure_ascii=False)
    if len(shown) > 1500:
        shown = shown[:1500] + " …"
    raise SpecViolation(f"{schema_name}: {where}: {error.message}\n  instance: {shown}")


# --- whole exchanges ---------------------------------------------------------------------------

def parse_sse(body: bytes) -> list[str]:
    """The `data` of each event of an SSE body (comments skipped, multi-line data joined)."""
    events, data = [], []
    for line in body.decode("utf-8").splitlines():
        if not line:
            if data:
                events.append("\n".join(data))
                data = []
        elif line.startswith(":"):
            continue
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        events.append("\n".join(data))
    return events


def _route(path: str) -> str:
    path = urlsplit(path).path
    return path[3:] if path.startswith("/v1/") else path


def schema_for(method: str, path: str, request_body: dict | None, *, stream: bool) -> str | None:
    route = _route(path)
    if method == "POST" and route == "/chat/completions":
        return "CreateChatCompletionStreamResponse" if stream else "CreateChatCompletionResponse"
    if method == "POST" and route == "/completions":
        return "CreateCompletionStreamChunk" if stream else "CreateCompletionResponse"
    if method == "POST" and route == "/embeddings":
        base64 = (request_body or {}).get("encoding_format") == "base64"
        return "CreateEmbeddingResponseBase64" if base64 else "CreateEmbeddingResponse"
    if method == "GET" and route == "/models":
        return "ListModelsResponse"
    if method == "GET" and route.startswith("/models/"):
        return "Model"
    return None


def check_exchange(method: str, path: str, status: int, content_type: str, body: bytes,
                   request_body: dict | None = None) -> dict:
    """Validate one response against the spec; return what was checked.

    Returns {"schema", "json"} for a JSON body or {"schema", "events"} for a
    stream, where events are the decoded chunks in order ("[DONE]" kept as a string).
    """
    what = f"{method} {path} → {status}"
    if status >= 400:
        try:
            document = json.loads(body)
        except ValueError:
            raise SpecViolation(f"{what}: error body is not JSON: {body[:300]!r}") from None
        _validate_in(what, "ErrorResponse", document)
        return {"schema": "ErrorResponse", "json": document}
    if "text/event-stream" in (content_type or ""):
        schema = schema_for(method, path, request_body, stream=True)
        events = []
        for data in parse_sse(body):
            if data == "[DONE]":
                events.append(data)
                continue
            chunk = json.loads(data)
            _validate_in(what, "ErrorResponse" if isinstance(chunk, dict) and "error" in chunk else schema,
                         chunk)
            events.append(chunk)
        return {"schema": schema, "events": events}
    schema = schema_for(method, path, request_body, stream=False)
    try:
        document = json.loads(body)
    except ValueError:
        raise SpecViolation(f"{what}: body is not JSON ({content_type}): {body[:300]!r}") from None
    if schema is not None:
        _validate_in(what, schema, document)
    return {"schema": schema, "json": document}


def _validate_in(what: str, schema: str | None, instance) -> None:
    if schema is None:
        raise SpecViolation(f"{what}: no spec schema for this route")
    try:
        validate(schema, instance)
    except SpecViolation as violation:
        raise SpecViolation(f"{what}: {violation}") from None


# --- recording what httpx clients receive ------------------------------------------------------

class _Exchange:
    __slots__ = ("method", "url", "path", "status", "content_type", "request_body", "chunks", "done")

    def __init__(self, request, response):
        self.method = request.method
        self.url = str(request.url)
        self.path = request.url.raw_path.decode("ascii")
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "")
        try:
            self.request_body = json.loads(request.content) if request.content else None
        except Exception:  # a streamed or non-JSON request body
            self.request_body = None
        self.chunks: list[bytes] = []
        self.done = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def as_dict(self) -> dict:
        return {"method": self.method, "url": self.url, "path": self.path, "status": self.status,
                "content_type": self.content_type, "request_body": self.request_body,
                "body": self.body.decode("utf-8", "replace"), "complete": self.done}

    def check(self) -> dict:
        return check_exchange(self.method, self.path, self.status, self.content_type, self.body,
                              self.request_body)


def record_httpx(sink: list) -> callable:
    """Patch httpx's transports so every response body read is also appended to `sink`.

    Each item is an exchange with .method .path .status .content_type .request_body
    .body and .done (the body was read to its end). Returns a function that undoes the patch.
    """
    import httpx

    sync_send = httpx.HTTPTransport.handle_request
    async_send = httpx.AsyncHTTPTransport.handle_async_request

    class SyncTee(httpx.SyncByteStream):
        def __init__(self, inner, exchange):
            self.inner, self.exchange = inner, exchange

        def __iter__(self):
            for part in self.inner:
                self.exchange.chunks.append(part)
                yield part
            self.exchange.done = True

        def close(self):
            self.inner.close()

    class AsyncTee(httpx.AsyncByteStream):
        def __init__(self, inner, exchange):
            self.inner, self.exchange = inner, exchange

        async def __aiter__(self):
            async for part in self.inner:
                self.exchange.chunks.append(part)
                yield part
            self.exchange.done = True

        async def aclose(self):
            await self.inner.aclose()

    def handle_request(self, request):
        response = sync_send(self, request)
        exchange = _Exchange(request, response)
        sink.append(exchange)
        response.stream = SyncTee(response.stream, exchange)
        return response

    async def handle_async_request(self, request):
        response = await async_send(self, request)
        exchange = _Exchange(request, response)
        sink.append(exchange)
        response.stream = AsyncTee(response.stream, exchange)
        return response

    httpx.HTTPTransport.handle_request = handle_request
    httpx.AsyncHTTPTransport.handle_async_request = handle_async_request

    def undo():
        httpx.HTTPTransport.handle_request = sync_send
        httpx.AsyncHTTPTransport.handle_async_request = async_send
    return undo


# A sitecustomize.py for Python processes under test: records every httpx exchange (what the openai
# SDK sends and gets) and writes them to the file named by $WIRE_LOG at exit, for check_exchange.
# $RECORDER_SCHEMAS names this module, loaded by path (the process under test has no `tests` package).
PYTHON_HTTPX_RECORDER = """
import atexit, importlib.util, json, os
_spec = importlib.util.spec_from_file_location("_recorder_openapi", os.environ["RECORDER_SCHEMAS"])
_schemas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_schemas)
_sink = []
_schemas.record_httpx(_sink)

@atexit.register
def _dump():
    with open(os.environ["WIRE_LOG"], "w") as handle:
        for exchange in _sink:
            handle.write(json.dumps(exchange.as_dict()) + "\\n")
"""


# A node preload module: wraps `fetch` (which the `openai` npm package uses) and appends each
# exchange, as read off the wire, to the file named by $WIRE_LOG, for check_exchange.
NODE_FETCH_RECORDER = """
import { appendFileSync } from 'node:fs';

const log = process.env.WIRE_LOG;
const originalFetch = globalThis.fetch;

globalThis.fetch = async (input, init = {}) => {
  const response = await originalFetch(input, init);
  const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
  const record = {
    method: (init.method || 'GET').toUpperCase(), path: url.pathname + url.search,
    status: response.status, content_type: response.headers.get('content-type') || '',
    request_body: typeof init.body === 'string' ? JSON.parse(init.body) : null,
  };
  if (!response.body) {
    appendFileSync(log, JSON.stringify({ ...record, body: '' }) + '\\n');
    return response;
  }
  const [forClient, forLog] = response.body.tee();
  (async () => {
    const chunks = [];
    for await (const chunk of forLog) chunks.push(Buffer.from(chunk));
    appendFileSync(log, JSON.stringify({ ...record, body: Buffer.concat(chunks).toString('utf8') }) + '\\n');
  })();
  return new Response(forClient, { status: response.status, statusText: response.statusText,
                                   headers: response.headers });
};
"""
