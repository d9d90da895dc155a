"""Abuse matrix: forbidden fields at any depth and case, deep nesting, count caps, a maximum-size body.

Every forbidden field of the contract, wherever it sits in the body and however it is spelled, is
a 400 `forbidden_parameter` naming its dotted path, and the upstream receives nothing. JSON Schema
documents (tool parameters, response formats, vLLM's guided_json) are data and pass. Nesting deeper
than 64 levels is a 400 `nesting_too_deep`, never a 500. Each count cap accepts its limit and
refuses one more, naming the field. And validating a maximum-size body does not stall the worker's
other work: a stream in flight keeps its chunk rhythm and a liveliness probe answers at once.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from itertools import pairwise

import pytest
import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY, quiet_config
from .gateway_process import GatewayProcess
from .wire import SSEResponse, assert_openai_error, assert_sse_framing

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
INVALID = "invalid_request_error"
UP = "up-echo"                  # a model at the fake upstream: a leak would be seen there
UP_EMBED = "up-embed"
EVIL = "http://evil.example/v1"

FORBIDDEN = [
    "api_base", "base_url", "api_url", "endpoint", "endpoint_url", "api_key", "apikey", "api_version",
    "x_api_key", "authorization", "azure_ad_token", "azure_ad_token_provider", "client_id", "client_secret",
    "tenant_id", "extra_headers", "headers", "default_headers", "proxy", "proxies", "http_proxy",
    "https_proxy", "custom_llm_provider", "organization", "region_name", "user_config",
    "router_settings_override", "router_settings", "litellm_settings", "general_settings", "model_list",
    "fallbacks", "context_window_fallbacks", "content_policy_fallbacks", "num_retries", "max_retries",
    "retry_policy", "cooldown_time", "allowed_fails", "input_cost_per_token", "output_cost_per_token",
    "mock_response", "deployment_id",
]
# one example of each forbidden prefix
PREFIXED = ["aws_access_key_id", "aws_whatever", "azure_endpoint", "azure_x", "vertex_credentials",
            "vertex_project", "litellm_params", "litellm_anything", "user_api_key_alias", "user_api_key"]
# spelled as a careless or crafty client would: the error names the key as it was sent
MIXED_CASE = ["API_Base", "Base-URL", "Api-Key", "API-KEY", "AUTHORIZATION", "Extra-Headers", "X-Api-Key",
              "Custom-LLM-Provider", "AWS_Secret_Access_Key", "Azure-AD-Token", "Vertex_Location",
              "LiteLLM-Params", "LITELLM_SETTINGS", "User-Config", "Router_Settings_Override",
              "Mock-Response", "User-API-Key-Alias", "Num-Retries"]

MAX_BODY = 10 * 1024 * 1024


def settings_yaml(upstream, chunks: int = 5, gap_ms: int = 10) -> str:
    models = {UP: "meta-llama/Llama-3.1-8B-Instruct", UP_EMBED: "text-embedding-3-small",
              "slow": f"slow-{chunks}-{gap_ms}"}
    return quiet_config(upstream.base_url, models, stream_timeout=10, max_request_body_mb=10)


def start(upstream, folder, *, workers: int = 2, **shape) -> GatewayProcess:
    path = folder / "config.yaml"
    path.write_text(settings_yaml(upstream, **shape))
    return GatewayProcess(path, workers=workers, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}).start()


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    process = start(upstream, tmp_path_factory.mktemp("abuse"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        s.headers.update(AUTH)
        yield s


def post(session, gw, path, body, timeout=30):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return session.post(f"{gw.url}{path}", data=data, headers={"Content-Type": "application/json"},
                        timeout=timeout)


def upstream_count(upstream) -> int:
    with upstream.lock:
        return len(upstream.requests)


def user(content="hi"):
    return {"role": "user", "content": content}


# --- forbidden fields -----------------------------------------------------------------------------

def placed(key: str, where: str) -> tuple[str, dict, str]:
    """(path, body, expected param) with the forbidden `key` put at `where`."""
    if where == "top":
        return CHAT, {"model": UP, "messages": [user()], key: EVIL}, key
    if where == "extra_body":
        return CHAT, {"model": UP, "messages": [user()], "extra_body": {key: EVIL}}, f"extra_body.{key}"
    if where == "metadata":
        return CHAT, {"model": UP, "messages": [user()], "metadata": {"team": "a", key: EVIL}}, f"metadata.{key}"
    if where == "message":
        return (CHAT, {"model": UP, "messages": [{"role": "system", "content": "be brief"},
                                                 {"role": "user", "content": "hi", key: EVIL}]},
                f"messages[1].{key}")
    if where == "content_part":
        return (CHAT, {"model": UP, "messages": [user([{"type": "text", "text": "a"},
                                                       {"type": "text", "text": "b", key: EVIL}])]},
                f"messages[0].content[1].{key}")
    if where == "deep_extra":
        return (CHAT, {"model": UP, "messages": [user()],
                       "vendor_options": {"routing": [{"ok": 1}, {"ok": 2}, {"inner": {key: EVIL}}]}},
                f"vendor_options.routing[2].inner.{key}")
    if where == "completions_extra_body":
        return COMPLETIONS, {"model": UP, "prompt": "hi", "extra_body": {key: EVIL}}, f"extra_body.{key}"
    if where == "embeddings_top":
        return EMBEDDINGS, {"model": UP_EMBED, "input": "hi", key: EVIL}, key
    raise AssertionError(where)


POSITIONS = ["top", "extra_body", "metadata", "message", "content_part"]
FORBIDDEN_CASES = (
    [pytest.param(key, where, id=f"{key}@{where}") for key in FORBIDDEN + PREFIXED for where in POSITIONS]
    + [pytest.param(key, where, id=f"{key}@{where}") for key in MIXED_CASE for where in POSITIONS]
    + [pytest.param(key, where, id=f"{key}@{where}")
       for key in ("api_base", "API_Base", "Base-URL", "litellm_params", "aws_secret_access_key", "headers")
       for where in ("deep_extra", "completions_extra_body", "embeddings_top")]
)


@pytest.mark.parametrize("key, where", FORBIDDEN_CASES)
def test_forbidden_field_is_refused_before_the_upstream(gw, upstream, session, key, where):
    path, body, param = placed(key, where)
    before = upstream_count(upstream)
    response = post(session, gw, path, body)
    assert_openai_error(response, 400, INVALID, code="forbidden_parameter", param=param)
    with upstream.lock:      # the fake upstream records a request before it answers it
        reached = upstream.requests[before:]
    assert not reached, f"a forbidden field reached the upstream: {reached[0]['body']!r:.300}"


def test_every_listed_field_is_in_the_matrix():
    assert len(FORBIDDEN) == 43 and len(set(FORBIDDEN)) == 43
    for prefix in ("aws_", "azure_", "vertex_", "litellm_", "user_api_key"):
        assert any(k.startswith(prefix) for k in PREFIXED), prefix


# --- JSON Schema documents are data ------------------------------------------------------------------

SCHEMA_WITH_FORBIDDEN_NAMES = {
    "type": "object",
    "properties": {"headers": {"type": "object", "properties": {"api_key": {"type": "string"}}},
                   "api_key": {"type": "string"}, "API_Base": {"type": "string"},
                   "litellm_params": {"type": "string"}, "aws_region_name": {"type": "string"}},
    "required": ["headers", "api_key"],
}


def tool(name="call_api", parameters=None):
    return {"type": "function", "function": {"name": name, "description": "calls an API",
                                             "parameters": parameters or SCHEMA_WITH_FORBIDDEN_NAMES}}


EXEMPT = [
    pytest.param({"tools": [tool()]}, id="tools-parameters"),
    pytest.param({"tools": [tool("a", {"type": "object"}), tool("b")], "tool_choice": "auto"},
                 id="second-tool-parameters"),
    pytest.param({"functions": [{"name": "call_api", "parameters": SCHEMA_WITH_FORBIDDEN_NAMES}]},
                 id="functions-parameters"),
    pytest.param({"response_format": {"type": "json_schema", "json_schema": {
        "name": "reply", "schema": SCHEMA_WITH_FORBIDDEN_NAMES}}}, id="response-format-json-schema"),
    pytest.param({"guided_json": SCHEMA_WITH_FORBIDDEN_NAMES}, id="vllm-guided-json"),
    pytest.param({"structured_outputs": {"json": SCHEMA_WITH_FORBIDDEN_NAMES}}, id="vllm-structured-outputs"),
]


@pytest.mark.parametrize("extra", EXEMPT)
def test_json_schema_documents_may_name_forbidden_keys(gw, upstream, session, extra):
    response = post(session, gw, CHAT, {"model": UP, "messages": [user("schema ok")], **extra})
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["content"] == "echo: schema ok"
    sent = upstream.last_request()["body"]
    assert sent["messages"][-1]["content"] == "schema ok"
    for name, value in extra.items():
        assert sent.get(name) == value, f"{name} was not forwarded as sent: {sent.get(name)!r:.300}"


@pytest.mark.parametrize("extra, param", [
    pytest.param({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                               "api_base": EVIL}}]},
                 "tools[0].function.api_base", id="tool-function-beside-parameters"),
    pytest.param({"tools": [{"type": "function", "headers": {"x": "1"},
                             "function": {"name": "f", "parameters": {"type": "object"}}}]},
                 "tools[0].headers", id="tool-itself"),
    pytest.param({"response_format": {"type": "json_schema", "json_schema": {
        "name": "r", "schema": {"type": "object"}, "Base_URL": EVIL}}},
        "response_format.json_schema.Base_URL", id="json-schema-beside-schema"),
    pytest.param({"functions": [{"name": "f", "parameters": {"type": "object"}, "api_key": "k"}]},
                 "functions[0].api_key", id="function-beside-parameters"),
])
def test_the_exemption_is_only_the_schema_document(gw, upstream, session, extra, param):
    before = upstream_count(upstream)
    response = post(session, gw, CHAT, {"model": UP, "messages": [user()], **extra})
    assert_openai_error(response, 400, INVALID, code="forbidden_parameter", param=param)
    assert upstream_count(upstream) == before


# --- deep nesting ---------------------------------------------------------------------------------------

def depth(value) -> int:
    """Nesting depth in arrays + objects: a scalar is 0, `{}` and `[]` are 1, `{"a": []}` is 2."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def nest(levels: int):
    """`levels` of alternating objects and arrays around a string."""
    value = "leaf"
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


def deep_body(where: str, total: int) -> tuple[str, dict]:
    """A body whose whole JSON document is exactly `total` levels deep, the depth sitting at `where`."""
    if where == "extra-field":                   # body(1) → vendor_extra
        path, body = CHAT, {"model": "mock", "messages": [user()], "vendor_extra": nest(total - 1)}
    elif where == "content-part-field":          # body(1) messages(2) message(3) content(4) part(5)
        path, body = CHAT, {"model": "mock", "messages": [user([{"type": "text", "text": "hi",
                                                                 "vendor_extra": nest(total - 5)}])]}
    elif where == "message-content":             # body(1) messages(2) message(3) → content
        path, body = CHAT, {"model": "mock", "messages": [{"role": "user", "content": nest(total - 3)}]}
    elif where == "metadata":                    # body(1) metadata(2) → deep
        path, body = CHAT, {"model": "mock", "messages": [user()], "metadata": {"deep": nest(total - 2)}}
    elif where == "tool-parameters":             # body(1) tools(2) tool(3) function(4) parameters(5)
        path, body = CHAT, {"model": "mock", "messages": [user()], "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                         "x": nest(total - 5)}}}]}
    elif where == "completions-prompt":          # body(1) → prompt
        path, body = COMPLETIONS, {"model": "mock", "prompt": nest(total - 1)}
    elif where == "embeddings-input":            # body(1) → input
        path, body = EMBEDDINGS, {"model": "mock", "input": nest(total - 1)}
    else:
        raise AssertionError(where)
    assert depth(body) == total, (where, depth(body))
    return path, body


DEEP_PLACES = ["extra-field", "content-part-field", "message-content", "metadata", "tool-parameters",
               "completions-prompt", "embeddings-input"]


@pytest.mark.parametrize("levels", [65, 300])
@pytest.mark.parametrize("where", DEEP_PLACES)
def test_nesting_deeper_than_64_is_a_400(gw, session, where, levels):
    path, body = deep_body(where, levels)
    response = post(session, gw, path, body)
    assert_openai_error(response, 400, INVALID, code="nesting_too_deep")


@pytest.mark.parametrize("levels", [2_000, 100_000])
@pytest.mark.parametrize("where", ["extra-field", "message-content"])
def test_nesting_far_past_any_parser_limit_is_a_400(gw, session, where, levels):
    """Thousands of levels, past orjson's own recursion limit (1024) too: built as bytes."""
    deep = b'{"a":[' * (levels // 2) + b'"leaf"' + b"]}" * (levels // 2)
    if where == "extra-field":
        raw = b'{"model": "mock", "messages": [{"role": "user", "content": "hi"}], "x": ' + deep + b"}"
    else:
        raw = b'{"model": "mock", "messages": [{"role": "user", "content": ' + deep + b"}]}"
    response = post(session, gw, CHAT, raw)
    # 100,000 levels are also 100,000 containers: refused before parsing, by the parse-cost cap
    codes = ("nesting_too_deep",) if levels < 10_000 else ("nesting_too_deep", "too_many_values")
    assert assert_openai_error(response, 400, INVALID)["code"] in codes


@pytest.mark.parametrize("where", ["extra-field", "content-part-field", "metadata", "tool-parameters"])
def test_nesting_of_exactly_64_is_accepted(gw, session, where):
    path, body = deep_body(where, 64)
    response = post(session, gw, path, body)
    assert response.status_code == 200, response.text[:500]


# --- count caps: the limit is accepted, one more is refused naming the field -----------------------------

def chat_with(**fields):
    return {"model": "mock", "messages": [user()], **fields}


def small_tool(i):
    return {"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}}


CAPS = {
    # name: (path, body at a count of n, count limit, expected param)
    "messages": (CHAT, lambda n: {"model": "mock", "messages": [user(f"m{i}") for i in range(n)]},
                 10_000, "messages"),
    "content-parts": (CHAT, lambda n: {"model": "mock", "messages": [
        {"role": "system", "content": "be brief"},
        user([{"type": "text", "text": f"p{i}"} for i in range(n)])]}, 500, "messages[1].content"),
    "tools": (CHAT, lambda n: chat_with(tools=[small_tool(i) for i in range(n)]), 512, "tools"),
    "functions": (CHAT, lambda n: chat_with(functions=[{"name": f"f{i}", "parameters": {"type": "object"}}
                                                       for i in range(n)]), 512, "functions"),
    "stop": (CHAT, lambda n: chat_with(stop=[f"s{i}" for i in range(n)]), 64, "stop"),
    "logit-bias": (CHAT, lambda n: chat_with(logit_bias={str(i): 1 for i in range(n)}), 1024, "logit_bias"),
    "n": (CHAT, lambda n: chat_with(n=n), 128, "n"),
    "completions-n": (COMPLETIONS, lambda n: {"model": "mock", "prompt": "hi", "n": n}, 128, "n"),
    "best-of": (COMPLETIONS, lambda n: {"model": "mock", "prompt": "hi", "best_of": n}, 20, "best_of"),
    "completions-stop": (COMPLETIONS, lambda n: {"model": "mock", "prompt": "hi",
                                                 "stop": [f"s{i}" for i in range(n)]}, 64, "stop"),
    "prompt-list": (COMPLETIONS, lambda n: {"model": "mock", "prompt": [f"p{i}" for i in range(n)]},
                    2048, "prompt"),
    "embeddings-input": (EMBEDDINGS, lambda n: {"model": "mock", "input": [f"t{i}" for i in range(n)]},
                         2048, "input"),
    "embeddings-token-arrays": (EMBEDDINGS, lambda n: {"model": "mock", "input": [[1, 2, i] for i in range(n)]},
                                2048, "input"),
    "dimensions": (EMBEDDINGS, lambda n: {"model": "mock", "input": "hi", "dimensions": n}, 16_384, "dimensions"),
}


@pytest.mark.parametrize("name", list(CAPS))
def test_cap_at_its_limit_is_accepted(gw, session, name):
    path, build, limit, _ = CAPS[name]
    response = post(session, gw, path, build(limit))
    assert response.status_code == 200, response.text[:500]


@pytest.mark.parametrize("name", list(CAPS))
def test_cap_one_over_is_a_400_naming_the_field(gw, session, name):
    path, build, limit, param = CAPS[name]
    response = post(session, gw, path, build(limit + 1))
    assert_openai_error(response, 400, INVALID, param=param)


def test_cap_one_over_never_reaches_the_upstream(gw, upstream, session):
    before = upstream_count(upstream)
    body = {"model": UP, "messages": [user(f"m{i}") for i in range(10_001)]}
    assert_openai_error(post(session, gw, CHAT, body), 400, INVALID, param="messages")
    body = {"model": UP_EMBED, "input": [f"t{i}" for i in range(2049)]}
    assert_openai_error(post(session, gw, EMBEDDINGS, body), 400, INVALID, param="input")
    assert upstream_count(upstream) == before


@pytest.mark.parametrize("value", [0, -1, 16_385, 1_000_000_000])
def test_dimensions_out_of_range(gw, session, value):
    response = post(session, gw, EMBEDDINGS, {"model": "mock", "input": "hi", "dimensions": value})
    assert_openai_error(response, 400, INVALID, param="dimensions")


def test_dimensions_of_one_is_accepted(gw, session):
    response = post(session, gw, EMBEDDINGS, {"model": "mock", "input": "hi", "dimensions": 1})
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["data"][0]["embedding"]) == 1


# --- a maximum-size body while a stream is in flight ----------------------------------------------------

STREAM_CHUNKS, STREAM_GAP_MS = 600, 10     # ~6 s of chunks 10 ms apart
MAX_GAP = 0.100


def exactly(target: int, body: dict, pad: callable) -> bytes:
    """`body` serialised to exactly `target` bytes, `pad(body, n)` adding n bytes of filler."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) <= target, (len(raw), target)
    pad(body, target - len(raw))
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) == target, (len(raw), target)
    return raw


def max_size_bodies() -> dict[str, bytes]:
    """Valid bodies a few bytes under max_request_body_mb (10 MiB): each one a different shape of work."""
    target = MAX_BODY - 4096

    def pad_first_content(body, n):
        body["messages"][0]["content"] += "x" * n

    messages = {"model": "mock", "messages": [user("y" * 1000) for _ in range(10_000)]}
    props = {f"p{i}": {"type": "string", "description": "d" * 200} for i in range(40)}
    tools = chat_with(tools=[{"type": "function", "function": {
        "name": f"f{i}", "parameters": {"type": "object", "properties": props}}} for i in range(512)])
    extras = chat_with(vendor_extra=[{"k": i % 10} for i in range(1_250_000)])
    extra_keys = chat_with(vendor_options={f"option_{i}": i for i in range(450_000)})
    return {name: exactly(target, body, pad_first_content) for name, body in
            [("10k-messages", messages), ("512-tools", tools), ("many-small-extras", extras),
             ("many-extra-keys", extra_keys)]}


# Real requests at the size limit are served; bodies of over a million tiny values, whose
# parsing alone would stall the worker, are refused before parsing (screening.PARSE_BUDGET_NS).
EXPECTED = {"10k-messages": 200, "512-tools": 200, "many-small-extras": 400, "many-extra-keys": 400}


def probe(gw) -> float:
    """Seconds for a liveliness probe on a fresh connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return time.monotonic() - started


def test_maximum_size_bodies_do_not_stall_a_stream_or_a_probe(upstream, tmp_path):
    gw = start(upstream, tmp_path, workers=1, chunks=STREAM_CHUNKS, gap_ms=STREAM_GAP_MS)
    try:
        bodies = max_size_bodies()              # built before the stream starts: no client-side stall
        stream = SSEResponse.open(gw.url, CHAT, {"model": "slow", "stream": True, "messages": [user()]},
                                  AUTH, timeout=30)
        reader = threading.Thread(target=stream.read_all, daemon=True)
        reader.start()
        while len(stream.events) < 20:          # the stream is flowing
            assert reader.is_alive(), stream.body[:300]
            time.sleep(0.01)

        results: dict[str, tuple] = {}

        def send(name, raw):
            started = time.monotonic()
            with requests.Session() as s:
                response = s.post(f"{gw.url}{CHAT}", data=raw, timeout=60,
                                  headers={**AUTH, "Content-Type": "application/json"})
            results[name] = (response.status_code, response.text[:300], started, time.monotonic())

        senders = [threading.Thread(target=send, args=item, daemon=True) for item in bodies.items()]
        for thread in senders:
            thread.start()
            time.sleep(0.15)
        probes = []
        while len(probes) < 5 or (any(t.is_alive() for t in senders) and len(probes) < 200):
            probes.append(probe(gw))
            time.sleep(0.05)
        for thread in senders:
            thread.join(60)
        reader.join(30)
        stream_ended = stream.events[-1].at if stream.events else 0
        stream.close()
    finally:
        gw.stop()

    assert_sse_framing(stream)
    times = [e.at for e in stream.events]
    gaps = sorted((b - a, i) for i, (a, b) in enumerate(pairwise(times)))
    worst, at = gaps[-1]
    assert worst < MAX_GAP, (f"a {worst * 1000:.0f} ms gap between stream chunks {at} and {at + 1} "
                             f"(chunks every {STREAM_GAP_MS} ms) while maximum-size bodies were handled; "
                             f"the five worst: {[round(g * 1000) for g, _ in gaps[-5:]]} ms")
    assert probes, "no probe ran while the bodies were handled"
    assert max(probes) < MAX_GAP, f"liveliness probes took up to {max(probes) * 1000:.0f} ms: " \
                                  f"{sorted(round(p * 1000) for p in probes)[-5:]} ms"
    for name, (status, text, _, _) in results.items():
        assert status == EXPECTED[name], (name, status, text)
        if status == 400:
            assert '"code":"too_many_values"' in text, (name, text)
    assert set(results) == set(bodies)
    assert len(stream.events) >= STREAM_CHUNKS, len(stream.events)
    last_done = max(done for *_, done in results.values())
    assert last_done < stream_ended, \
        f"the bodies were still being handled when the stream ended ({last_done - stream_ended:.2f}s after)"
