"""Screen a parsed request body before validation: forbidden fields at any depth, nesting depth.

A client must never choose an upstream URL, credential, header or router
setting: such a key is refused wherever it stands (top level, `extra_body`,
`metadata`, inside a message…), in any letter case, with `-` read as `_`,
because some upstream or chained proxy may read it there. The exceptions are
JSON Schema documents (tool parameters, response formats), whose property
names are data for the model, not settings for anyone.

The walk is iterative (no recursion limit to hit) and yields to the event loop
on large bodies, so one big request never stalls a worker's other requests.
Parsing cannot yield, so before it `check_parse_cost` refuses a body whose
JSON holds so many values that parsing alone would stall the worker.
"""
from __future__ import annotations

from ..errors import ForbiddenParameter, InvalidRequest
from .cooperative import CHECK_EVERY, Pacer

MAX_DEPTH = 64   # arrays and objects; real requests (JSON Schemas included) stay far below

# Parsing cost, in nanoseconds per value as measured with orjson: a member of an
# object (key and value) ~450, an object or array ~350, any other value ~40. The
# budget parses in ~50 ms on a loaded two-core machine; the largest real requests
# (10,000 messages, 512 tools with schemas, 300,000 token ids) cost under a fifth of it.
PARSE_BUDGET_NS = 50_000_000
_NS_PER_MEMBER, _NS_PER_CONTAINER, _NS_PER_VALUE = 450, 350, 40
_WINDOW = 1 << 19

FORBIDDEN_KEYS = frozenset({
    # where the call goes, with which credentials and headers
    "api_base", "base_url", "api_url", "endpoint", "endpoint_url", "api_key", "apikey", "api_version",
    "x_api_key", "authorization", "client_id", "client_secret", "tenant_id", "extra_headers", "headers",
    "default_headers", "proxy", "proxies", "http_proxy", "https_proxy", "custom_llm_provider",
    "organization", "region_name", "deployment_id",
    # the peer's routing and pricing fields, which a LiteLLM proxy reads from a request
    "user_config", "router_settings_override", "router_settings", "litellm_settings", "general_settings",
    "model_list", "fallbacks", "context_window_fallbacks", "content_policy_fallbacks", "num_retries",
    "max_retries", "retry_policy", "cooldown_time", "allowed_fails", "input_cost_per_token",
    "output_cost_per_token", "mock_response",
})
FORBIDDEN_PREFIXES = ("aws_", "azure_", "vertex_", "litellm_", "user_api_key")

# JSON Schema documents: keys below these paths are property names chosen by the client's app.
_SCHEMA_TOP_LEVEL = frozenset({"guided_json", "structured_outputs"})


def check_parse_cost(raw: bytes, pacer: Pacer) -> None:
    """Refuse (400) a body whose JSON has more values than a worker may parse in one go.

    Counting structural bytes is cheap; only when that upper bound is over the
    budget are the bytes inside strings (a pasted document, code) left out.
    Both passes go window by window, with a turn for the event loop between
    windows: even one pass over 10 MB in one go held a worker's streams up for
    tens of ms on a slow machine.
    """
    if sum(_cost(window) for window in _windows(raw, pacer)) <= PARSE_BUDGET_NS:
        return
    if values_cost(raw, pacer) > PARSE_BUDGET_NS:
        raise InvalidRequest("The request body holds more JSON values than the gateway parses in one request.",
                             code="too_many_values")


def values_cost(raw: bytes, pacer: Pacer) -> int:
    """Estimated parse time (ns) of `raw`'s JSON structure, the bytes inside strings left out."""
    cost, inside_string = 0, False
    for window in _windows(raw, pacer):
        plain = window.replace(b"\\\\", b"").replace(b'\\"', b"")   # no escaped quote is left to mislead
        pieces = plain.split(b'"')
        cost += _cost(b"".join(pieces[1 if inside_string else 0::2]))
        inside_string ^= (len(pieces) - 1) % 2 == 1
    return cost


def _windows(raw: bytes, pacer: Pacer):
    """`raw` in slices of about _WINDOW bytes, none ending inside an escape (`\\"`, `\\\\`)."""
    start, size = 0, len(raw)
    while start < size:
        end = min(start + _WINDOW, size)
        while end < size and raw[end - 1] == 0x5C:   # a backslash: keep what it escapes in this window
            end += 1
        yield raw[start:end]
        pacer.tick(CHECK_EVERY)   # a window is a check's worth of work
        start = end


def _cost(data: bytes) -> int:
    members = data.count(b":")
    containers = data.count(b"{") + data.count(b"[")
    values = data.count(b",")
    return members * _NS_PER_MEMBER + containers * _NS_PER_CONTAINER + values * _NS_PER_VALUE


def screen(body: dict, pacer: Pacer) -> None:
    """Raise a 400 for a forbidden key or too deep nesting; return None for a clean body.

    On the hot path for every request: one loop, no call per key or per value.
    """
    stack: list[tuple[object, tuple, int, bool]] = [(body, (), 1, False)]
    pop, push = stack.pop, stack.append
    forbidden, prefixes, schema_keys = FORBIDDEN_KEYS, FORBIDDEN_PREFIXES, _SCHEMA_KEYS
    seen = 0
    while stack:
        value, path, depth, exempt = pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.",
                                 param=_dotted(path), code="nesting_too_deep")
        seen += len(value)
        if type(value) is dict:
            for key, child in value.items():
                if not exempt:
                    name = key.lower()
                    if "-" in name:
                        name = name.replace("-", "_")
                    if name in forbidden or name.startswith(prefixes):
                        raise _forbidden(path + (key,))
                kind = type(child)
                if kind is dict or kind is list:
                    child_path = path + (key,)
                    push((child, child_path, depth + 1, exempt or (key in schema_keys and _is_schema(child_path))))
        else:
            for index, child in enumerate(value):
                kind = type(child)
                if kind is dict or kind is list:
                    push((child, path + (index,), depth + 1, exempt))
        if seen > 4096:
            pacer.tick(seen)
            seen = 0


_SCHEMA_KEYS = frozenset({"parameters", "schema"}) | _SCHEMA_TOP_LEVEL


def _forbidden(path: tuple) -> ForbiddenParameter:
    where = _dotted(path)
    return ForbiddenParameter(f"'{where}' is not allowed in a request: upstream URLs, credentials, headers and "
                              f"routing come only from the gateway's config.", param=where)


def _is_schema(path: tuple) -> bool:
    """tools[i].function.parameters, functions[i].parameters, response_format.json_schema.schema, …"""
    last = path[-1]
    if len(path) == 1:
        return last in _SCHEMA_TOP_LEVEL
    if last == "parameters":
        return (len(path) == 4 and path[0] == "tools" and path[2] == "function") or (
            len(path) == 3 and path[0] == "functions")
    if last == "schema":
        return path[:2] == ("response_format", "json_schema") and len(path) == 3
    return False


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
