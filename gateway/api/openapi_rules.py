"""The request schemas' cross-field rules (`@validates_schema`), as JSON Schema keywords for the OpenAPI document.

A field-by-field description says `content` may be null; the schema's own
rule says not for a user message. Each rule method is described here once, by
its qualified name; `openapi.py` adds the keywords (under `allOf`) to every
component whose class runs that rule, and tests/unit/test_openapi_document.py
fails when a schema runs a rule this table lacks, or when a sample the rule
refuses is one the description allows (or the reverse).
"""
from __future__ import annotations

_NULL = {"type": "null"}
_FALSY = {"enum": [None, False, 0, "", [], {}]}


def _given(name: str) -> dict:
    """`name` is present and not null."""
    return {"required": [name], "properties": {name: {"not": _NULL}}}


def _truthy(name: str) -> dict:
    """`name` is present and truthy, as Python reads JSON (`data.get(name)` is true)."""
    return {"required": [name], "properties": {name: {"not": _FALSY}}}


def _when(name: str, value, then: dict) -> dict:
    """If `name` equals `value`, `then` holds."""
    return {"if": {"required": [name], "properties": {name: {"const": value}}}, "then": then}


def _needs_true(option: str, switch: str) -> dict:
    """`option` (when given and not null) only with `switch` true."""
    return {"if": _given(option), "then": {"required": [switch], "properties": {switch: {"const": True}}}}


_PART_FIELDS = ("text", "image_url", "input_audio", "file", "refusal")

# Qualified name of each rule method → the keywords that say the same.
RULES = {
    "MessageSchema._content_by_role": [
        {"if": {"properties": {"role": {"enum": ["system", "developer", "user", "tool"]}}},
         "then": _given("content")},
        _when("role", "assistant", {"anyOf": [_given("content"), _truthy("tool_calls"), _truthy("function_call"),
                                              _truthy("refusal"), _truthy("audio")]}),
        _when("role", "tool", {"required": ["tool_call_id"]}),
    ],
    "ContentPartSchema._part_fields": [_when("type", name, {"required": [name]}) for name in _PART_FIELDS],
    "ToolSchema._function_given": [_when("type", "function", {"required": ["function"]})],
    "ResponseFormatSchema._schema_given": [_when("type", "json_schema", {"required": ["json_schema"]})],
    "_SamplingSchema._stream_options_need_stream": [_needs_true("stream_options", "stream")],
    "ChatCompletionSchema._top_logprobs_need_logprobs": [_needs_true("top_logprobs", "logprobs")],
    "DeleteKeys._names_some": [{"anyOf": [_truthy("keys"), _truthy("key_aliases")]}],
}


def rule_names(schema_class: type) -> list[str]:
    """Qualified names of the `@validates_schema` methods `schema_class` runs (its own and inherited)."""
    names = []
    for tag, hooks in getattr(schema_class, "_hooks", {}).items():
        if (tag[0] if isinstance(tag, tuple) else tag) != "validates_schema":
            continue
        for hook in hooks:
            attribute = hook[0] if isinstance(hook, tuple) else hook
            names.append(getattr(schema_class, attribute).__qualname__)
    return names


def keywords_for(schema_class: type) -> list[dict]:
    """The `allOf` entries describing `schema_class`'s rules; KeyError names a rule not described here."""
    return [keyword for name in rule_names(schema_class) for keyword in RULES[name]]
