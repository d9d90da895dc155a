"""Property-based fuzzing of the running gateway: over 10,000 generated requests, none answered badly.

Bodies mix valid OpenAI shapes (then changed in one place, or not) with wrong types, unicode, huge
numbers, nested junk, forbidden fields and bytes that are not JSON at all; headers vary
Content-Type, the credential headers and random extras. The property, for every request: the
gateway's answer is never a 5xx (the fake upstream is healthy, so no 5xx can be an upstream's error
passed on), it is either an OpenAI-shaped JSON error or a valid success (checked against OpenAI's
spec; SSE ending in [DONE] when a stream was asked for), a model endpoint answers 401 exactly when
the master key is not given the way the contract accepts it, and no worker dies.

hypothesis runs derandomized with no example database: the same 10,000+ requests on every run.
A failure is shrunk to a small request and printed as `Failing test case`.
"""
from __future__ import annotations

import copy
import json
import string
from collections import Counter
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import MASTER_KEY, UPSTREAM_KEY, quiet_config
from .gateway_process import GatewayProcess
from .openapi_schemas import check_exchange, parse_sse
from .wire import assert_no_leak, assert_openai_error

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
EXAMPLES = {"chat": 3500, "completions": 2000, "embeddings": 2000, "raw": 2500}
TOTAL = 10_000
assert sum(EXAMPLES.values()) >= TOTAL

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

ROUTE_OF = {"/chat/completions": CHAT, "/completions": COMPLETIONS, "/embeddings": EMBEDDINGS}
ERROR_TYPE = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


@pytest.fixture(scope="module")
def fuzz_gateway(upstream, tmp_path_factory):
    base = upstream.base_url
    models = {"echo": "meta-llama/Llama-3.1-8B-Instruct", "text-embedding-3-small": "text-embedding-3-small",
              "fixture-text": "fixture-text-usage", "fixture-tools": "fixture-parallel-tool-calls-usage"}
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(quiet_config(base, models, max_request_body_mb=1))
    process = GatewayProcess(path, workers=2, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}).start()
    process.initial_workers = sorted(process.worker_pids())
    assert len(process.initial_workers) == 2
    process.statuses = Counter()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


# --- strategies ------------------------------------------------------------------------------------
# Lean on purpose: a draw costs tens of microseconds, so leaves come from prepared lists and only a
# few places draw free-form text or recursive structures; 10,000 examples stay within minutes.

def one_of_list(values: list):
    """sampled_from(values) by index: the same draws, without a strategy repr of kilobytes."""
    return st.integers(0, len(values) - 1).map(values.__getitem__)


# Field names: the real ones, the forbidden ones (any case), and a little random text.
KNOWN_KEYS = ["model", "messages", "prompt", "input", "stream", "stream_options", "temperature", "top_p", "n",
              "max_tokens", "stop", "logit_bias", "seed", "user", "tools", "tool_choice", "response_format",
              "metadata", "logprobs", "top_logprobs", "dimensions", "encoding_format", "role", "content", "type",
              "text", "image_url", "url", "function", "name", "parameters", "arguments", "extra_body", "best_of",
              "echo", "suffix", "api_base", "API_KEY", "Base-URL", "headers", "litellm_params", "aws_region_name",
              "user_config", "mock_response", "Extra-Headers", "__proto__", "", " ", "model ", "MODEL", "é", "🔑",
              "top_k", "guided_json", "x" * 300]
keys = one_of_list(KNOWN_KEYS) | st.text(max_size=6)
NUMBERS = [0, 1, 2, 3, -1, 64, 65, 128, 129, 512, 1024, 2048, 2049, 16384, 16385, 0.0, -0.0, 0.5, 1.5, 2.0000001,
           -2.5, 100.0, 1e-320, 5e-324, 1.7976931348623157e308, -1.7976931348623157e308, float("inf"),
           float("-inf"), float("nan"), 2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, -(2 ** 63) - 1, 2 ** 64,
           10 ** 30, -(10 ** 100), True, False]
numbers = st.sampled_from(NUMBERS) | st.integers(-5, 300) | st.floats()
TEXTS = ["", " ", "hi", "Hello, world", "\x00", "a\x00b", "\u202e\u0644\u0627\u0645", "🤖" * 5, "\\u0000",
         "\r\n\r\n", "<script>alert(1)</script>", "${jndi:ldap://x}", "%s%n%x", "' OR 1=1 --", "\ufeff", "\u2028\u2029",
         "x" * 5000, "e\u0301" * 50, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0010ffff", "null", "true", "{}", "[]",
         "data: [DONE]\n\n", "https://evil.example/v1", "sk-" + "a" * 48]
unicode_text = one_of_list(TEXTS) | st.text(max_size=12)
DEEP = {"a": [{"b": [{"c": [[[[]]]]}]}]}
for _ in range(35):
    DEEP = {"x": [DEEP]}                                                   # 72 levels: over the limit


def _nested(levels: int) -> bytes:
    return b'[{"k":' * (levels // 2) + b'"leaf"' + b"}]" * (levels // 2)


# Past orjson's encoder (255) and parser (1024) limits, and Python's recursion limit: drawn as marker
# strings, spliced in as bytes by encode().
DEEP_BYTES = {"\x00deep-300\x00": _nested(300), "\x00deep-1100\x00": _nested(1100)}
DEEPER, DEEPEST = DEEP_BYTES
JUNK = [None, True, False, 0, -1, 1.5, 2 ** 64, 10 ** 30, float("nan"), float("inf"), "", "x", "🤖", "\ud800",
        "\udfff", [], [None], [1, "a", None], [[[]]], {}, {"": None}, {"a": {"b": {"c": [1, {"d": None}]}}},
        {"type": "text", "text": 5}, {"role": "user"}, {"api_base": "http://evil.example"}, DEEPER, DEEPEST,
        {"nested": {"API_KEY": "sk-x"}}, {"Headers": {"X-Evil": "1"}}, ["api_key"], DEEP, [DEEP],
        {"model": "mock", "messages": []}, list(range(100)), {str(i): i for i in range(50)}, "x" * 10000]
junk_leaf = one_of_list(JUNK)
junk = junk_leaf | st.recursive(st.sampled_from(JUNK[:18]) | numbers | unicode_text,
                                lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                                max_leaves=5)


@st.composite
def _maybe(draw, valid, wrong):
    return draw(wrong if draw(st.integers(0, 9)) == 0 else valid)


def maybe(valid, wrong=junk_leaf):
    """Nine times in ten `valid`, else something wrong (by default: any JSON at all)."""
    return _maybe(valid, wrong)


def ranged(low, high, integer=False):
    """A valid number in [low, high] nine times in ten, else a wrong type or an out-of-range number."""
    valid = st.integers(low, high) if integer else st.integers(int(low), int(high)) | st.floats(low, high)
    return maybe(valid, numbers | junk_leaf)


roles = maybe(st.sampled_from(["user"] * 6 + ["system", "developer", "assistant"]),
              st.sampled_from(["tool", "function", "wizard", "", "USER"]) | junk_leaf)
URLS = ["https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo=", "", "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/", "javascript:alert(1)"]
part = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["text", "text", "image_url", "input_audio", "file", "refusal", "video", ""]))},
    optional={"text": maybe(unicode_text), "image_url": maybe(st.fixed_dictionaries(
        {"url": maybe(st.sampled_from(URLS))}, optional={"detail": st.sampled_from(["auto", "low", "high", "max"])})),
        "input_audio": junk_leaf, "file": junk_leaf, "refusal": unicode_text, "cache_control": junk_leaf})
content = maybe(unicode_text | st.lists(part, min_size=1, max_size=3))
tool_call = st.fixed_dictionaries({"id": maybe(st.sampled_from(["call_1", "", "x" * 100])),
                                   "type": maybe(st.just("function")),
                                   "function": maybe(st.fixed_dictionaries({
                                       "name": maybe(st.sampled_from(["f", "get_weather", ""])),
                                       "arguments": maybe(st.sampled_from(["{}", '{"a": 1}', "not json"]))}))})
message = st.fixed_dictionaries(
    {"role": roles, "content": content},
    optional={"name": maybe(unicode_text), "tool_calls": maybe(st.lists(tool_call, max_size=2)),
              "tool_call_id": maybe(st.sampled_from(["call_1", ""])), "refusal": junk_leaf})
messages = maybe(st.lists(message, min_size=1, max_size=3))
NAMES = ["f", "get_weather", "a" * 64, "a" * 65, "get weather!", "", "é", "x-y_z"]
function_def = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(NAMES))},
    optional={"description": unicode_text, "strict": maybe(st.booleans()), "parameters": maybe(st.fixed_dictionaries(
        {"type": st.just("object"), "properties": st.dictionaries(keys, junk_leaf, max_size=3)}))})
tool = st.fixed_dictionaries({"type": maybe(st.sampled_from(["function", "function", "custom", "retrieval"]))},
                             optional={"function": maybe(function_def)})
response_format = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["text", "json_object", "json_schema", "xml"]))},
    optional={"json_schema": maybe(st.fixed_dictionaries({"name": maybe(st.sampled_from(NAMES))},
                                                         optional={"schema": junk, "strict": maybe(st.booleans())}))})
stop = maybe(st.sampled_from(["", "\n", "END", "x" * 1000]) | st.lists(st.sampled_from(["a", "", "\n"]), max_size=5))
logit_bias = maybe(st.dictionaries(st.sampled_from(["0", "50256", "-1", "1e3", "x", "", "999999999999"]),
                                   ranged(-100, 100),
                                   max_size=3))
stream_options = maybe(st.fixed_dictionaries({}, optional={"include_usage": maybe(st.booleans()),
                                                           "include_obfuscation": maybe(st.booleans())}))
extras = st.dictionaries(keys, junk, max_size=2)

SAMPLING = dict(
    stream=maybe(st.booleans()), stream_options=stream_options, temperature=ranged(0, 2), top_p=ranged(0, 1),
    n=ranged(1, 3, True), max_tokens=ranged(1, 4096, True), stop=stop, logit_bias=logit_bias,
    seed=ranged(-(2 ** 63), 2 ** 63 - 1, True), user=maybe(unicode_text), presence_penalty=ranged(-2, 2),
    frequency_penalty=ranged(-2, 2))

WRONG_MODELS = (st.sampled_from(["no-such-model", "", "MOCK", "mock\u0000", "mock ", "../mock", "openai/mock"])
                | junk_leaf)
CHAT_MODELS = maybe(st.sampled_from(["mock", "mock", "echo", "fixture-text", "fixture-tools"]), WRONG_MODELS)
TEXT_MODELS = maybe(st.sampled_from(["mock", "mock", "echo"]), WRONG_MODELS)
EMBEDDING_MODELS = maybe(st.sampled_from(["mock", "mock", "text-embedding-3-small", "echo"]), WRONG_MODELS)


def with_extras(base):
    """A body from `base`, with a few extra fields merged in (possibly forbidden ones), or a key dropped."""
    @st.composite
    def build(draw):
        body = draw(base)
        change = draw(st.integers(0, 9))
        if change < 2:
            body.update(draw(extras))
        elif change == 2:
            body.pop(draw(st.sampled_from(sorted(body))))
        return body
    return build()


chat_bodies = with_extras(st.fixed_dictionaries(
    {"model": CHAT_MODELS, "messages": messages},
    optional={**SAMPLING, "tools": maybe(st.lists(tool, max_size=2)),
              "tool_choice": maybe(st.sampled_from(["none", "auto", "required", "sometimes"])),
              "response_format": maybe(response_format), "parallel_tool_calls": maybe(st.booleans()),
              "max_completion_tokens": ranged(1, 4096, True), "logprobs": maybe(st.booleans()),
              "top_logprobs": ranged(0, 20, True),
              "metadata": maybe(st.dictionaries(st.sampled_from(["team", "x", "api_key", "🤖"]), unicode_text,
                                                max_size=2)),
              "reasoning_effort": maybe(st.sampled_from(["low", "high", "extreme"])), "store": maybe(st.booleans()),
              "modalities": junk_leaf, "functions": maybe(st.lists(function_def, max_size=2)), "extra_body": extras}))
PROMPTS = ["", "hi", ["a", "b"], [], [""], [1, 2, 3], [[1, 2], [3]], [[]], [-1], [2 ** 40], [1.5], ["a", 1],
           [["a"]], ["x"] * 2049, list(range(3000))]
prompts = maybe(unicode_text | st.lists(unicode_text, min_size=1, max_size=3), one_of_list(PROMPTS) | junk_leaf)
completion_bodies = with_extras(st.fixed_dictionaries(
    {"model": TEXT_MODELS, "prompt": prompts},
    optional={**SAMPLING, "best_of": ranged(1, 3, True), "echo": maybe(st.booleans()),
              "suffix": maybe(unicode_text), "logprobs": ranged(0, 5, True)}))
embedding_bodies = with_extras(st.fixed_dictionaries(
    {"model": EMBEDDING_MODELS, "input": prompts},
    optional={"dimensions": ranged(1, 64, True), "encoding_format": maybe(st.sampled_from(["float", "base64", "hex"])),
              "user": maybe(unicode_text)}))

# --- valid bodies, then at most one mutation -------------------------------------------------------
# Half the bodies start valid and get one change (a value swapped for junk, a forbidden or unknown
# key inserted somewhere, a key dropped) or none: so successes and precise refusals both get exercised.

safe_text = unicode_text
valid_part = (st.fixed_dictionaries({"type": st.just("text"), "text": safe_text})
              | st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
                  {"url": st.sampled_from(URLS[:2])}, optional={"detail": st.sampled_from(["auto", "low", "high"])})}))
valid_message = (st.fixed_dictionaries({"role": st.sampled_from(["user", "user", "system", "developer", "assistant"]),
                                        "content": safe_text})
                 | st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(valid_part, min_size=1,
                                                                                        max_size=3)}))
valid_tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "get_weather", "a" * 64, "x-y_z"])},
    optional={"description": safe_text, "parameters": st.fixed_dictionaries(
        {"type": st.just("object"), "properties": st.dictionaries(keys, st.just({"type": "string"}), max_size=3)})})})
VALID_SAMPLING = dict(
    temperature=st.floats(0, 2), top_p=st.floats(0, 1), n=st.integers(1, 3), max_tokens=st.integers(1, 4096),
    stop=st.sampled_from(["\n", "END"]) | st.lists(st.sampled_from(["a", "\n", "###"]), max_size=4),
    seed=st.integers(-(2 ** 63), 2 ** 63 - 1), user=safe_text, presence_penalty=st.floats(-2, 2),
    frequency_penalty=st.floats(-2, 2), logit_bias=st.dictionaries(st.integers(0, 100000).map(str),
                                                                   st.integers(-100, 100), max_size=3))


@st.composite
def streamed(draw, base):
    """`stream` true or false or absent; stream_options only with stream true."""
    body = draw(base)
    mode = draw(st.integers(0, 3))
    if mode:
        body["stream"] = mode >= 2
    if mode == 3:
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


valid_chat = streamed(st.fixed_dictionaries(
    {"model": st.sampled_from(["mock", "mock", "echo", "fixture-text", "fixture-tools"]),
     "messages": st.lists(valid_message, min_size=1, max_size=3)},
    optional={**VALID_SAMPLING, "tools": st.lists(valid_tool, max_size=2),
              "tool_choice": st.sampled_from(["none", "auto"]), "logprobs": st.booleans(),
              "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {
                  "type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}]),
              "metadata": st.dictionaries(st.sampled_from(["team", "x", "🤖"]), safe_text, max_size=2),
              "max_completion_tokens": st.integers(1, 4096), "parallel_tool_calls": st.booleans(),
              "top_k": st.integers(1, 50)}))
valid_completion = streamed(st.fixed_dictionaries(
    {"model": st.sampled_from(["mock", "mock", "echo"]),
     "prompt": safe_text | st.lists(safe_text, min_size=1, max_size=3)
     | st.lists(st.integers(0, 50000), min_size=1, max_size=5)},
    optional={**VALID_SAMPLING, "echo": st.booleans(), "best_of": st.integers(3, 5), "suffix": safe_text}))
valid_embedding = st.fixed_dictionaries(
    {"model": st.sampled_from(["mock", "mock", "text-embedding-3-small", "echo"]),
     "input": safe_text | st.lists(safe_text, min_size=1, max_size=4)
     | st.lists(st.lists(st.integers(0, 50000), min_size=1, max_size=4), min_size=1, max_size=3)},
    optional={"dimensions": st.integers(1, 64), "encoding_format": st.sampled_from(["float", "base64"]),
              "user": safe_text})


def _containers(value, path=()):
    yield path, value
    children = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in children:
        if isinstance(child, (dict, list)):
            yield from _containers(child, path + (key,))


@st.composite
def mutated(draw, valid):
    body = copy.deepcopy(draw(valid))   # drawn values may be shared (sampled_from, just): never mutate them
    kind = draw(st.integers(0, 5))
    if kind <= 1:
        return body                                   # as is
    containers = list(_containers(body))
    _, target = draw(st.sampled_from(containers))
    if kind == 2 and target:                          # a value swapped for junk
        key = draw(st.sampled_from(sorted(target))) if isinstance(target, dict) else \
            draw(st.integers(0, len(target) - 1))
        target[key] = draw(junk)
    elif kind == 3 and isinstance(target, dict):      # a key inserted: forbidden, known or unknown
        target[draw(keys)] = draw(junk_leaf | safe_text)
    elif kind == 4 and target:                        # a key or item dropped
        if isinstance(target, dict):
            target.pop(draw(st.sampled_from(sorted(target))))
        else:
            target.pop()
    else:
        body.update(draw(extras))
    return body


chat_bodies = mutated(valid_chat) | chat_bodies
completion_bodies = mutated(valid_completion) | completion_bodies
embedding_bodies = mutated(valid_embedding) | embedding_bodies


def encode(value, ascii_only: bool, compact: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True,
                      separators=(",", ":") if compact else None)
    raw = text.encode("utf-8", "surrogatepass")       # a lone surrogate becomes bytes that are not UTF-8
    for marker, deep in DEEP_BYTES.items():
        raw = raw.replace(json.dumps(marker).encode(), deep)
    return raw


@st.composite
def encoded(draw, bodies):
    """(raw bytes, the body they encode or None): mostly JSON of a body, sometimes mangled bytes."""
    body = draw(bodies)
    raw = encode(body, draw(st.booleans()), draw(st.booleans()))
    how = draw(st.integers(0, 19))
    if how == 0:                                          # cut short
        return raw[:draw(st.integers(0, max(0, len(raw) - 1)))], None
    if how == 1:                                          # trailing garbage
        return raw + draw(st.sampled_from([b"}", b" x", b"\x00", b"\n{}", b",", b"\xff"])), None
    if how == 2:                                          # a byte order mark or another encoding
        return draw(st.sampled_from([b"\xef\xbb\xbf" + raw, raw.decode("utf-8", "surrogatepass")
                                     .encode("utf-16", "surrogatepass")])), None
    return raw, body


NOT_JSON = [b"", b" ", b"null", b"[]", b"{}", b"[{}]", b'"x"', b"1e999999", b"-", b"NaN", b"{'model': 'mock'}",
            b'{"model": "mock", "messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}',
            b'{"model":"mock","messages":[{"role":"user","content":"\xff\xfe"}]}',
            b'{"model":"mock","model":"echo","messages":[{"role":"user","content":"dup"}]}',
            b'{"model":"mock","messages":[{"role":"user","content":"hi"}],"api_base":1,"api_base":2}',
            b'{"model":"mock","messages":[{"role":"user","content":"hi"}],"n":123456789012345678901234567890}',
            b'{"model":"mock","messages":[{"role":"user","content":"hi"}],"temperature":1e400}',
            b'{"model":"mock","input":"x","dimensions":-1e-400}',
            b'{"model":"mock","messages":[{"role":"user","content":"\\ud800"}]}',
            b'{"model":"mock","prompt":"' + b"\\u0000" * 50 + b'"}',
            b'{"model":"mock","messages":' + b"[" * 200 + b"]" * 200 + b"}",
            b'{"model":"mock","messages":[{"role":"user","content":"hi"}]}' * 2,
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",            # a gzip header
            b"model=mock&messages=hi", b"--x\r\nContent-Disposition: form-data\r\n\r\n--x--",
            b"x" * (1024 * 1024 + 10)]                               # over max_request_body_mb
raw_bodies = (one_of_list(NOT_JSON).map(lambda b: (b, None)) | st.binary(max_size=300).map(lambda b: (b, None))
              | encoded(junk) | encoded(chat_bodies) | encoded(completion_bodies) | encoded(embedding_bodies))

GOOD_AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
KEY_ACCEPTED = [GOOD_AUTH] * 57 + [{"Authorization": f"bearer {MASTER_KEY}"}, {"api-key": MASTER_KEY},
                                   {"x-api-key": MASTER_KEY}]
KEY_REFUSED = [{}, {"Authorization": MASTER_KEY}, {"Authorization": f"Basic {MASTER_KEY}"},
               {"Authorization": f"Token {MASTER_KEY}"}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
               {"Authorization": f"Bearer {MASTER_KEY}x"}, {"Authorization": f"Bearer {MASTER_KEY[:-1]}"},
               {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Bearer {MASTER_KEY}, Bearer sk-other"},
               {"api-key": ""}, {"x-api-key": "sk-wrong"}, {"Authorization": f"Bearer {MASTER_KEY.upper()}"}]
AUTH_VARIANTS = st.sampled_from([(h, True) for h in KEY_ACCEPTED] + [(h, False) for h in KEY_REFUSED])
CONTENT_TYPES = st.sampled_from(["application/json"] * 60 + [
    "application/json; charset=utf-8", "APPLICATION/JSON", "application/json;charset=latin-1", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/vnd.api+json", "", "*/*",
    "application/json, text/plain", None, "application/jsonx", "json"])
header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xff, exclude_characters="\x7f"),
                      max_size=60).map(str.lstrip)
header_names = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=20).map(lambda s: "X-" + s)
KNOWN_HEADERS = st.sampled_from([
    ("Accept", "text/event-stream"), ("Accept", "application/json"), ("Accept", "*/*"), ("Accept", "image/png"),
    ("Accept-Encoding", "gzip, br"), ("Accept-Encoding", "identity"), ("User-Agent", ""), ("User-Agent", "x" * 200),
    ("Expect", "100-continue"), ("Content-Encoding", "gzip"), ("x-request-id", "abc"), ("x-request-id", "a b\t"),
    ("Origin", "https://evil.example"), ("X-Forwarded-For", "1.2.3.4, 127.0.0.1"), ("Cookie", "session=1"),
    ("OpenAI-Organization", "org-x"), ("OpenAI-Beta", "assistants=v2"), ("x-stainless-retry-count", "2")])


@st.composite
def headers(draw):
    """(request headers, whether their credential is the master key)."""
    auth, accepted = draw(AUTH_VARIANTS)
    result = dict(auth)
    content_type = draw(CONTENT_TYPES)
    result["Content-Type"] = content_type           # None: requests sends no Content-Type
    for name, value in draw(st.lists(KNOWN_HEADERS, max_size=3)):
        result[name] = value
    for name, value in draw(st.dictionaries(header_names, header_text, max_size=3)).items():
        result[name] = value
    return result, accepted


# --- the property ------------------------------------------------------------------------------------

def exchange(gateway, session, method: str, path: str, raw: bytes, body, request_headers: dict,
             key_accepted: bool | None = None) -> None:
    """Send one request and check the property; `key_accepted` (None: not checked) says whether its
    credential is good, for routes that authenticate before anything else."""
    shown = f"{method} {path} headers={request_headers!r:.300} body={raw[:400]!r}"
    try:
        response = session.request(method, f"{gateway.url}{path}", data=raw, headers=request_headers,
                                    timeout=30)
    except requests.RequestException as exc:
        raise AssertionError(f"no HTTP answer ({type(exc).__name__}: {exc}) to {shown}") from None
    status = response.status_code
    gateway.statuses[status] += 1
    assert status < 500, f"{status} {response.text[:300]} to {shown}"
    if key_accepted is True:
        assert status not in (401, 403), f"the master key was refused: {response.text[:300]} to {shown}"
    elif key_accepted is False:
        assert status in (401, 413), f"{status} without a valid key: {response.text[:300]} to {shown}"
    assert_no_leak(response.text)
    if status >= 300:
        try:
            assert_openai_error(response, status, ERROR_TYPE.get(status, "invalid_request_error"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n  to {shown}") from None
        return
    assert status == 200, f"{status} {response.text[:300]} to {shown}"
    route = ROUTE_OF.get(urlsplit(path).path.replace("//", "/").rstrip("/").removeprefix("/v1"))
    assert route, f"200 from a route that is not a model endpoint, to {shown}"
    stream = route != EMBEDDINGS and isinstance(body, dict) and body.get("stream") is True
    content_type = response.headers.get("Content-Type", "")
    try:
        if stream:
            assert content_type.split(";")[0].strip() == "text/event-stream", content_type
            events = parse_sse(response.content)
            assert events and events[-1] == "[DONE]" and events.count("[DONE]") == 1, events[-3:]
            assert not any('"error"' in e[:20] for e in events), "an in-band error from a healthy upstream"
        else:
            assert content_type.split(";")[0].strip() == "application/json", content_type
        checked = check_exchange(method, route, status, content_type, response.content, body)
        if not stream:
            expected = {CHAT: "chat.completion", COMPLETIONS: "text_completion", EMBEDDINGS: "list"}[route]
            assert checked["json"]["object"] == expected, checked["json"]
    except (AssertionError, ValueError) as exc:
        raise AssertionError(f"a bad success ({exc}): {response.content[:300]!r}\n  to {shown}") from None


@settings(FUZZ, max_examples=EXAMPLES["chat"])
@given(request=encoded(chat_bodies), request_headers=headers())
def test_chat_completions_fuzz(fuzz_gateway, session, request, request_headers):
    exchange(fuzz_gateway, session, "POST", CHAT, *request, *request_headers)


@settings(FUZZ, max_examples=EXAMPLES["completions"])
@given(request=encoded(completion_bodies), request_headers=headers())
def test_completions_fuzz(fuzz_gateway, session, request, request_headers):
    exchange(fuzz_gateway, session, "POST", COMPLETIONS, *request, *request_headers)


@settings(FUZZ, max_examples=EXAMPLES["embeddings"])
@given(request=encoded(embedding_bodies), request_headers=headers())
def test_embeddings_fuzz(fuzz_gateway, session, request, request_headers):
    exchange(fuzz_gateway, session, "POST", EMBEDDINGS, *request, *request_headers)


@settings(FUZZ, max_examples=EXAMPLES["raw"])
@given(request=raw_bodies, request_headers=headers(),
       route=st.sampled_from([("POST", CHAT)] * 4 + [("POST", COMPLETIONS)] * 2 + [("POST", EMBEDDINGS)] * 2 + [
           ("POST", "/chat/completions"), ("POST", "/v1/chat/completions/"), ("POST", "/v1/chat"),
           ("GET", CHAT), ("PUT", COMPLETIONS), ("DELETE", EMBEDDINGS), ("PATCH", CHAT), ("POST", "/v1/models"),
           ("POST", "/v1/chat/completions?stream=true"), ("POST", "/v1//chat/completions"),
           ("POST", "/v1/%2e%2e/v1/chat/completions"), ("POST", "/v1/embeddings%00")]))
def test_any_bytes_any_route_fuzz(fuzz_gateway, session, request, request_headers, route):
    method, path = route
    raw, body = request
    exchange(fuzz_gateway, session, method, path, raw, body, request_headers[0])


def test_ten_thousand_requests_and_no_worker_died(fuzz_gateway):
    statuses = fuzz_gateway.statuses
    sent = sum(statuses.values())
    assert sent >= TOTAL, f"only {sent} generated requests were answered: {dict(statuses)}"
    # the generators reach both sides of validation, not just one kind of refusal
    assert statuses[200] >= sent // 10 and statuses[400] >= sent // 10, dict(statuses)
    assert sorted(fuzz_gateway.worker_pids()) == fuzz_gateway.initial_workers, "a worker died or was replaced"


# --- heads the server layer refuses: still an OpenAI JSON error ------------------------------------------

@pytest.mark.parametrize("request_headers, target", [
    pytest.param({f"X-H{i}": "v" for i in range(101)}, CHAT, id="101-headers"),
    pytest.param({"X-Long": "v" * 70_000}, CHAT, id="70k-header-line"),
    pytest.param({}, CHAT + "?" + "q" * 9000, id="9k-request-line"),
])
def test_a_head_refused_by_the_server_layer_is_still_json(fuzz_gateway, request_headers, target):
    response = requests.post(f"{fuzz_gateway.url}{target}", timeout=10,
                             headers={**GOOD_AUTH, **request_headers},
                             json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
    assert 400 <= response.status_code < 500, response.status_code
    assert_openai_error(response, response.status_code, "invalid_request_error")
