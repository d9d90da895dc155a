"""marshmallow request schemas → OpenAPI 3.1 schema objects: apispec's MarshmallowPlugin, taught our fields.

The request schemas (schemas.py, admin_schemas.py) validate with fields of
their own that parse strictly (`"0.7"` is not 0.7), which apispec cannot know.
FIELD_TYPES and FIELD_SCHEMAS say once per custom field class which JSON
values it accepts. Everything else (which fields a schema has, nesting,
`required`, `allow_none`, defaults, Range / Length / OneOf / Regexp
validators, `unknown`) is read from the schemas themselves, so a field added
there shows in the document with no edit here; a new custom field class fails
tests/unit/test_openapi_document.py until it is described here.
"""
from __future__ import annotations

from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import fields

from . import admin_schemas as admin
from . import schemas as model

# Custom fields that accept exactly one JSON type: validators and `allow_none` are added as for built-ins.
FIELD_TYPES = {
    model.StrictString: "string",
    model.StrictBool: "boolean",
    model.StrictNumber: "number",
    model.StrictInt: "integer",
    model.StrictDict: "object",
}

_STRINGS = {"type": "array", "items": {"type": "string"}}
_TOKEN_IDS = {"type": "array", "minItems": 1, "maxItems": model.MAX_INPUTS, "items": {"type": "integer"}}


def _prompt(converter, field) -> dict:
    many = {"minItems": 1, "maxItems": model.MAX_INPUTS}
    return {"anyOf": [
        {"type": "string"},
        {**_STRINGS, **many},
        _TOKEN_IDS,
        {"type": "array", **many, "items": {"type": "array", "minItems": 1, "items": {"type": "integer"}}}]}


def _content(converter, field) -> dict:
    part = converter.resolve_nested_schema(model.ContentPartSchema)
    return {"anyOf": [{"type": "string"},
                      {"type": "array", "minItems": 1, "maxItems": model.MAX_CONTENT_PARTS, "items": part}]}


def _tool_choice(converter, field) -> dict:
    return {"anyOf": [
        {"type": "string", "enum": list(model.TOOL_CHOICE_MODES)},
        {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string"},
            "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}},
         "description": "`{\"type\": \"function\", \"function\": {\"name\": …}}` names a function to call."}]}


def _cooperative_list(converter, field) -> dict:
    bounds = {"maxItems": field.max_items}
    if field.min_items:
        bounds["minItems"] = field.min_items
    return bounds


# Custom fields, by class, to the JSON Schema keywords they add (a dict, or a function of the converter and field).
FIELD_SCHEMAS = {
    model.OneOrManyStrings: {"anyOf": [{"type": "string"}, {**_STRINGS, "maxItems": model.MAX_STOP}]},
    model.MessageContent: _content,
    model.Prompt: _prompt,
    model.ToolChoice: _tool_choice,
    model.LogitBias: {"type": "object", "maxProperties": model.MAX_LOGIT_BIAS,
                      "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                      "description": "Token ids (as strings) to a bias between -100 and 100."},
    model.CooperativeList: _cooperative_list,
    admin.NonNegativeInt: {"minimum": 0},
    admin.NonNegativeNumber: {"minimum": 0},
    admin.Duration: {"pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(mo|s|m|h|d|w)\s*$",
                     "description": "A positive duration: a number and s, m, h, d, w or mo, e.g. \"30d\"."},
    admin.Limits: {"additionalProperties": {"type": "integer", "minimum": 0},
                   "description": "Model name to a non-negative limit."},
    admin.NewKey: {"pattern": "^sk-[\\x20-\\x7e]*$", "minLength": 8, "maxLength": admin.MAX_NAME,
                   "description": "A key of your choosing: 'sk-' and printable characters, 8 to 256 in all."},
    admin.When: {"anyOf": [{"format": "date"}, {"format": "date-time"}],
                 "description": "A day (YYYY-MM-DD, UTC; as an end date the day is included) or an ISO 8601 time "
                                "(UTC unless it names a zone)."},
}


def described(field_class: type) -> bool:
    """Is this field class one the document can describe (a marshmallow built-in, or listed above)?"""
    if field_class in FIELD_TYPES or field_class in FIELD_SCHEMAS:
        return True
    return field_class.__module__.startswith("marshmallow.") and field_class not in (fields.Field, fields.Raw)


def plugin(names: dict[type, str]) -> MarshmallowPlugin:
    """A MarshmallowPlugin naming components by `names`, else after the class (`MessageSchema` → `Message`)."""
    def component_name(schema) -> str:
        cls = schema if isinstance(schema, type) else type(schema)
        return names.get(cls) or cls.__name__.removesuffix("Schema")
    return MarshmallowPlugin(schema_name_resolver=component_name)


def teach(converter) -> None:
    """After `APISpec(plugins=[plugin])`: map our field classes for this converter only."""
    converter.field_mapping = dict(converter.field_mapping)   # apispec's default mapping is module-global
    for field_class, json_type in FIELD_TYPES.items():
        converter.map_to_openapi_type(field_class, json_type, None)
    converter.add_attribute_function(_custom_keywords)


def _custom_keywords(self, field: fields.Field, ret: dict, **kwargs) -> dict:
    """apispec attribute function: the keywords FIELD_SCHEMAS gives the field's class (nearest in its MRO)."""
    for cls in type(field).__mro__:
        if cls in FIELD_SCHEMAS:
            keywords = FIELD_SCHEMAS[cls]
            keywords = dict(keywords(self, field) if callable(keywords) else keywords)
            break
    else:
        return {}
    if field.allow_none and "type" not in ret:       # apispec made only typed fields nullable
        if "anyOf" in keywords:
            keywords["anyOf"] = [*keywords["anyOf"], {"type": "null"}]
        elif "type" in keywords:
            keywords["type"] = [keywords["type"], "null"]
    return keywords
