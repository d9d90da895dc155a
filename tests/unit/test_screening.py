"""gateway/api/screening.py and the schema caps: what a client may not send, at any depth."""
from __future__ import annotations

import orjson
import pytest

from gateway.api.cooperative import Pacer
from gateway.api.schemas import (MAX_CONTENT_PARTS, MAX_DIMENSIONS, MAX_INPUTS, MAX_LOGIT_BIAS, MAX_MESSAGES,
                                 MAX_STOP, MAX_TOOLS, ChatCompletionSchema, CompletionSchema, EmbeddingSchema)
from gateway.api.screening import MAX_DEPTH, screen
from gateway.errors import ForbiddenParameter, InvalidRequest

USER = {"role": "user", "content": "hi"}


def chat(**extra) -> dict:
    return {"model": "m", "messages": [USER], **extra}


def refused(body: dict) -> ForbiddenParameter:
    with pytest.raises(ForbiddenParameter) as info:
        screen(body, Pacer())
    assert info.value.status == 400 and info.value.code == "forbidden_parameter"
    return info.value


@pytest.mark.parametrize("body, param", [
    (chat(api_base="http://evil"), "api_base"),
    (chat(API_BASE="http://evil"), "API_BASE"),
    (chat(**{"Base-URL": "http://evil"}), "Base-URL"),
    (chat(extra_body={"api_key": "k"}), "extra_body.api_key"),
    (chat(metadata={"user_config": {"model_list": []}}), "metadata.user_config"),
    (chat(router_settings_override={"num_retries": 9}), "router_settings_override"),
    (chat(litellm_params={"api_base": "x"}), "litellm_params"),
    (chat(litellm_metadata={}), "litellm_metadata"),
    (chat(aws_secret_access_key="x"), "aws_secret_access_key"),
    (chat(Azure_AD_Token="x"), "Azure_AD_Token"),
    (chat(vertex_credentials="x"), "vertex_credentials"),
    (chat(extra_headers={"X": "y"}), "extra_headers"),
    (chat(fallbacks=["other-model"]), "fallbacks"),
    (chat(mock_response="free answer"), "mock_response"),
    (chat(input_cost_per_token=0), "input_cost_per_token"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi", "Authorization": "Bearer x"}]},
     "messages[0].Authorization"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x",
                                                                  "extra": {"deep": [{"x-api-key": "k"}]}}]}]},
     "messages[0].content[0].extra.deep[0].x-api-key"),
])
def test_forbidden_keys_are_refused_at_any_depth_in_any_case(body, param):
    assert refused(body).param == param


def test_json_schema_documents_are_exempt():
    tool = {"type": "function", "function": {"name": "fetch", "parameters": {
        "type": "object", "properties": {"headers": {"type": "object"}, "api_key": {"type": "string"},
                                         "base_url": {"type": "string"}}}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": {
        "type": "object", "properties": {"organization": {"type": "string"}}}}}
    screen(chat(tools=[tool], response_format=fmt, guided_json={"properties": {"proxy": {}}},
                functions=[{"name": "f", "parameters": {"properties": {"endpoint": {}}}}]), Pacer())


def test_the_exemption_does_not_cover_the_tool_itself():
    tool = {"type": "function", "function": {"name": "fetch", "parameters": {}}, "api_base": "x"}
    assert refused(chat(tools=[tool])).param == "tools[0].api_base"


def test_values_are_data_not_keys():
    screen(chat(messages=[{"role": "user", "content": "my api_key is in base_url headers"}], user="api_base"),
           Pacer())


def nested(lists: int):
    value: object = "x"
    for _ in range(lists):
        value = [value]
    return value


def test_nesting_at_the_limit_passes_and_one_more_is_refused():
    screen(chat(extra=nested(MAX_DEPTH - 1)), Pacer())   # the body object itself is level 1
    with pytest.raises(InvalidRequest) as info:
        screen(chat(extra=nested(MAX_DEPTH)), Pacer())
    assert info.value.param == "extra" + "[0]" * (MAX_DEPTH - 1)   # the first container past the limit
    assert info.value.code == "nesting_too_deep" and info.value.status == 400


def test_very_deep_nesting_is_a_clean_error_not_a_recursion_error():
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(InvalidRequest):
        screen(chat(extra=deep), Pacer())


def first_error(schema, body) -> str:
    errors = schema.validate(body)
    assert errors, "accepted"
    return next(iter(errors))


@pytest.mark.parametrize("field, at_limit, over", [
    ("messages", [USER] * MAX_MESSAGES, [USER] * (MAX_MESSAGES + 1)),
    ("tools", [{"type": "function", "function": {"name": "f"}}] * MAX_TOOLS,
     [{"type": "function", "function": {"name": "f"}}] * (MAX_TOOLS + 1)),
    ("functions", [{"name": "f"}] * MAX_TOOLS, [{"name": "f"}] * (MAX_TOOLS + 1)),
    ("stop", ["x"] * MAX_STOP, ["x"] * (MAX_STOP + 1)),
    ("logit_bias", {str(i): 1 for i in range(MAX_LOGIT_BIAS)}, {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}),
    ("n", 128, 129),
])
def test_chat_caps(field, at_limit, over):
    schema = ChatCompletionSchema()
    assert schema.validate(chat(**{field: at_limit})) == {}
    assert first_error(schema, chat(**{field: over})) == field


def test_content_parts_cap():
    schema = ChatCompletionSchema()
    parts = [{"type": "text", "text": "x"}]
    assert schema.validate(chat(messages=[{"role": "user", "content": parts * MAX_CONTENT_PARTS}])) == {}
    errors = schema.validate(chat(messages=[{"role": "user", "content": parts * (MAX_CONTENT_PARTS + 1)}]))
    assert errors == {"messages": {0: {"content": [f"must have at most {MAX_CONTENT_PARTS} content parts."]}}}


def test_embedding_caps():
    schema = EmbeddingSchema()
    assert schema.validate({"model": "m", "input": ["a"] * MAX_INPUTS, "dimensions": MAX_DIMENSIONS}) == {}
    assert first_error(schema, {"model": "m", "input": ["a"] * (MAX_INPUTS + 1)}) == "input"
    assert first_error(schema, {"model": "m", "input": "a", "dimensions": MAX_DIMENSIONS + 1}) == "dimensions"
    assert first_error(schema, {"model": "m", "input": "a", "dimensions": 0}) == "dimensions"


def test_completion_prompt_cap():
    schema = CompletionSchema()
    assert schema.validate({"model": "m", "prompt": ["a"] * MAX_INPUTS}) == {}
    assert first_error(schema, {"model": "m", "prompt": ["a"] * (MAX_INPUTS + 1)}) == "prompt"


def test_the_first_bad_message_is_the_one_reported():
    schema = ChatCompletionSchema()
    messages = [USER] * 5 + [{"role": "wizard", "content": "x"}] + [{"role": "user"}]
    assert schema.validate(chat(messages=messages)) == {
        "messages": {5: {"role": ["must be one of: system, developer, user, assistant, tool, function"]}}}


# --- the parse-cost check, window by window -------------------------------------------------------

def _whole_body_values_cost(raw: bytes) -> int:
    """The same estimate over the whole body at once: what the windows must add up to."""
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(plain.split(b'"')[0::2])
    return outside.count(b":") * 450 + (outside.count(b"{") + outside.count(b"[")) * 350 + outside.count(b",") * 40


def test_windows_never_cut_an_escape_so_strings_stay_strings():
    """Escaped quotes and backslash runs land on every offset of a window boundary in turn:
    the windows' estimate is always the whole body's, and the strings' punctuation never counts."""
    from gateway.api.screening import _WINDOW, _windows, values_cost
    text = 'a:b,{c}[d] \\"quoted: {x},\\" back\\\\slash\\\\\\" more, '   # 4 backslash shapes
    for shift in range(len(text) + 2):
        body = {"model": "m", "pad": "p" * (_WINDOW - 200 + shift), "messages": [{"role": "user",
                                                                                  "content": text * 20}]}
        raw = orjson.dumps(body)
        windows = list(_windows(raw, Pacer()))
        assert b"".join(windows) == raw and all(not w.endswith(b"\\") for w in windows[:-1])
        assert values_cost(raw, Pacer()) == _whole_body_values_cost(raw) < 10_000, shift


def test_a_body_of_a_million_tiny_values_is_refused_and_a_long_document_is_not():
    from gateway.api.screening import check_parse_cost
    document = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "k: v, {x} [y] " * 600_000}]})
    check_parse_cost(document, Pacer())   # ~8 MB of text full of JSON-looking punctuation: fine
    values = orjson.dumps({"model": "m", "messages": [], "extra": [{"k": i % 10} for i in range(1_000_000)]})
    with pytest.raises(InvalidRequest) as caught:
        check_parse_cost(values, Pacer())
    assert caught.value.code == "too_many_values"
