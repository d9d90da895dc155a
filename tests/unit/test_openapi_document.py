"""The OpenAPI document (gateway/api/openapi.py): valid 3.1, complete, and built from the schemas that validate.

Proves: the document validates as OpenAPI 3.1 (openapi-spec-validator); it
describes every route the app serves and no other; every field of every
request schema (nested ones and query strings included) is in it, and a field
added to a schema appears with no other edit; every custom field class and
every cross-field rule (`@validates_schema`) has a description, and the
description agrees with the rule on samples either side of it; the OpenAI
answer schemas the package serves are exactly those of the vendored spec; and
GET /openapi.json answers without a key, from bytes built once.

Run as a script, it prints the OpenAI subset for gateway/api/openapi_openai.py.
"""
from __future__ import annotations

import copy
import datetime
import json
import warnings
from pathlib import Path

import pytest
from marshmallow import Schema, fields

from gateway import create_app
from gateway.api import admin_schemas as admin
from gateway.api import openapi
from gateway.api import schemas as model
from gateway.api.openapi_fields import described
from gateway.api.openapi_openai import schemas as packaged_openai_schemas
from gateway.api.openapi_rules import RULES, rule_names

SPEC = Path(__file__).resolve().parents[1] / "reference" / "openai-openapi.yaml"
OPENAI_ROOTS = ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
                "CreateEmbeddingResponse", "ListModelsResponse", "Model", "ErrorResponse")
MASTER_KEY = "sk-openapi-document-master-0123456789"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    config = tmp_path_factory.mktemp("openapi") / "config.yaml"
    config.write_text(f"""
model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
general_settings:
  master_key: {MASTER_KEY}
""")
    return create_app(config)


@pytest.fixture(scope="module")
def document(app):
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # apispec warns of name clashes and unknown fields
        return openapi.build_document(app)


def components(document) -> dict:
    return document["components"]["schemas"]


# --- a valid OpenAPI 3.1 document ---------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1(document):
    from openapi_spec_validator import OpenAPIV31SpecValidator

    assert document["openapi"] == "3.1.0"
    errors = [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert not errors, errors[:10]
    broken = copy.deepcopy(document)
    del broken["paths"]["/health/liveness"]["get"]["responses"]["200"]["description"]   # required in 3.1
    assert not OpenAPIV31SpecValidator(broken).is_valid()     # the validator would notice a slip


def test_every_reference_resolves(document):
    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for reference in set(refs(document)):
        assert reference.startswith("#/components/"), reference
        target = document
        for part in reference[2:].split("/"):
            assert part in target, f"{reference} does not resolve"
            target = target[part]


def test_operation_ids_are_unique(document):
    ids = [op["operationId"] for path in document["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))


# --- routes: every one the app serves, and no other ---------------------------------------------

def test_every_route_the_app_serves_is_described(app, document):
    served = {(method.lower(), openapi.openapi_path(rule)) for method, rule in openapi.served(app)}
    described_ops = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served - described_ops == set(), "served, not described: add to GATEWAY_ROUTES or OPENAI_ROUTES"
    assert described_ops - served == set(), "described but not served"


def test_the_openai_routes_are_described_with_and_without_v1(document):
    for path in ("/chat/completions", "/completions", "/embeddings", "/models", "/models/{model_id}"):
        root, versioned = document["paths"][path], document["paths"]["/v1" + path]
        assert root.keys() == versioned.keys(), path
        for method in root:
            assert root[method]["operationId"] == versioned[method]["operationId"] + "AtRoot"
            assert root[method]["responses"] == versioned[method]["responses"]


def test_every_table_entry_names_a_route_flask_knows(app):
    rules = {(method, rule.rule) for rule in app.url_map.iter_rules() for method in rule.methods}
    missing = [key for key in openapi.routes() if key not in rules]
    assert not missing, f"the route tables describe routes the app does not have: {missing}"


def test_auth_is_described_per_route(document):
    open_paths = {"/health/liveliness", "/health/liveness", "/health/readiness", "/openapi.json"}
    for path, item in document["paths"].items():
        for operation in item.values():
            if path in open_paths:
                assert operation["security"] == [] and "401" not in operation["responses"], path
            elif path == "/metrics":
                assert {} in operation["security"], "metrics is open unless a metrics token is set"
            else:
                assert {"bearerAuth": []} in operation["security"] and "401" in operation["responses"], path
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "The master key or a virtual key."}


def test_every_error_answer_is_an_openai_error_body(document):
    for path, item in document["paths"].items():
        for operation in item.values():
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and not (path == "/health/readiness" and status == "503"):
                    assert answer["$ref"].startswith("#/components/responses/"), (path, status)
    for answer in document["components"]["responses"].values():
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
        assert "x-request-id" in answer["headers"]
    for name in ("TooManyRequests", "ServiceUnavailable"):
        assert "Retry-After" in document["components"]["responses"][name]["headers"]


def test_model_calls_describe_json_and_server_sent_events(document):
    for path in ("/v1/chat/completions", "/v1/completions"):
        content = document["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}
    for status in ("400", "401", "403", "404", "408", "413", "415", "429", "502", "503", "504"):
        assert status in document["paths"]["/v1/chat/completions"]["post"]["responses"], status


# --- request schemas: generated, so they cannot drift ---------------------------------------------

# Schemas a custom field validates with (not a marshmallow Nested, so not found by walking fields).
CUSTOM_NESTING = {model.MessageSchema: (model.ContentPartSchema,)}


def _nested_schemas(schema_class: type[Schema], seen: set) -> None:
    seen.add(schema_class)
    for field in schema_class().fields.values():
        for inner in (field, getattr(field, "inner", None)):
            if isinstance(inner, fields.Nested):
                nested = inner.nested if isinstance(inner.nested, type) else type(inner.schema)
                if nested not in seen:
                    _nested_schemas(nested, seen)
    for extra in CUSTOM_NESTING.get(schema_class, ()):
        if extra not in seen:
            _nested_schemas(extra, seen)


def _all_request_schemas() -> set[type[Schema]]:
    seen: set = set()
    for route, _ in openapi.routes().values():
        for schema_class in (route.body, route.query):
            if schema_class is not None:
                _nested_schemas(schema_class, seen)
    return seen


def _component(document, schema_class) -> dict:
    name = openapi.REQUEST_BODIES.get(schema_class) or schema_class.__name__.removesuffix("Schema")
    return components(document)[name]


def test_every_field_of_every_body_schema_is_in_the_document(document):
    bodies = [s for s in _all_request_schemas() if s not in {r.query for r, _ in openapi.routes().values()}]
    assert model.MessageSchema in bodies and admin.GenerateKey in bodies
    for schema_class in bodies:
        component = _component(document, schema_class)
        assert set(schema_class().fields) == set(component["properties"]), schema_class.__name__
        required = {name for name, field in schema_class().fields.items() if field.required}
        assert required == set(component.get("required", [])), schema_class.__name__


def test_every_query_field_is_a_query_parameter(document):
    for (method, rule), (route, _) in openapi.routes().items():
        if route.query is None or openapi.openapi_path(rule) not in document["paths"]:
            continue
        parameters = document["paths"][openapi.openapi_path(rule)][method.lower()]["parameters"]
        named = {p["name"]: p for p in parameters if p["in"] == "query"}
        assert set(route.query().fields) == set(named), rule
        for name, field in route.query().fields.items():
            assert named[name]["required"] == field.required, (rule, name)


def test_a_field_added_to_a_schema_appears_in_the_document(app, monkeypatch):
    monkeypatch.setitem(model.ChatCompletionSchema._declared_fields, "drift_probe", model.StrictInt(required=True))
    monkeypatch.setitem(admin.ListKeys._declared_fields, "drift_probe", fields.Integer())
    document = openapi.build_document(app)
    body = components(document)["CreateChatCompletionRequest"]
    assert body["properties"]["drift_probe"] == {"type": "integer"} and "drift_probe" in body["required"]
    query = document["paths"]["/key/list"]["get"]["parameters"]
    assert "drift_probe" in {parameter["name"] for parameter in query}


def test_strict_types_and_validators_are_carried_over(document):
    chat = components(document)["CreateChatCompletionRequest"]["properties"]
    assert chat["temperature"] == {"type": ["number", "null"], "minimum": 0, "maximum": 2}
    assert chat["messages"]["minItems"] == 1 and chat["messages"]["maxItems"] == model.MAX_MESSAGES
    assert chat["stream"] == {"type": ["boolean", "null"]}
    message = components(document)["Message"]
    assert message["properties"]["role"]["enum"] == list(model.ROLES)
    assert message["additionalProperties"] is True                       # unknown = INCLUDE
    assert components(document)["GenerateKeyRequest"]["additionalProperties"] is False   # unknown = RAISE
    listing = {p["name"]: p["schema"] for p in document["paths"]["/key/list"]["get"]["parameters"]}
    assert listing["size"] == {"type": "integer", "default": 10, "minimum": 1, "maximum": admin.MAX_PAGE_SIZE}


def test_every_field_class_in_a_request_schema_has_a_description():
    undescribed = set()
    for schema_class in _all_request_schemas():
        for name, field in schema_class().fields.items():
            for each in (field, getattr(field, "inner", None)):
                if each is not None and not described(type(each)):
                    undescribed.add(f"{schema_class.__name__}.{name}: {type(each).__name__}")
    assert not undescribed, "describe these in openapi_fields.FIELD_TYPES / FIELD_SCHEMAS: " + ", ".join(
        sorted(undescribed))


def test_every_cross_field_rule_has_a_description():
    missing = {name for schema_class in _all_request_schemas() for name in rule_names(schema_class)} - set(RULES)
    assert not missing, f"describe these @validates_schema rules in openapi_rules.RULES: {sorted(missing)}"
    assert rule_names(model.MessageSchema) == ["MessageSchema._content_by_role"]


# Samples either side of each rule: the document must accept exactly what the schema accepts.
_CALL = {"model": "m"}
_USER = {"role": "user", "content": "hi"}
_TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
RULE_SAMPLES = [
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "user"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "system", "content": None}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "developer", "content": "be brief"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "assistant"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "assistant", "content": None, "tool_calls": []}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "assistant", "tool_calls": [_TOOL_CALL]}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "assistant", "function_call": {"name": "f"}}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "assistant", "refusal": ""}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "assistant", "refusal": "no"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "assistant", "audio": {"id": "a"}}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "assistant", "audio": 0, "content": None}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "tool", "content": "42"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "function", "name": "f"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "user", "content": [{"type": "text",
                                                                                     "text": "hi"}]}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [{"role": "user", "content": [{"type": "other"}]}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "tools": [{"type": "function"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "tools": [{"type": "custom"}]}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "response_format": {"type": "json_schema"}}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "response_format": {
        "type": "json_schema", "json_schema": {"name": "n"}}}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "stream_options": {"include_usage": True}}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "stream_options": {}, "stream": False}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "stream_options": {}, "stream": True}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "stream_options": None}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "top_logprobs": 2}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "top_logprobs": 2, "logprobs": True}),
    (model.ChatCompletionSchema, {**_CALL, "messages": [_USER], "top_logprobs": None, "logprobs": False}),
    (model.CompletionSchema, {**_CALL, "prompt": "hi", "stream_options": {"include_usage": True}}),
    (model.CompletionSchema, {**_CALL, "prompt": "hi", "stream_options": {}, "stream": True}),
    (admin.DeleteKeys, {}),
    (admin.DeleteKeys, {"keys": []}),
    (admin.DeleteKeys, {"keys": ["sk-gone"]}),
    (admin.DeleteKeys, {"keys": [], "key_aliases": ["old"]}),
]


@pytest.fixture(scope="module")
def validator_for(document):
    from jsonschema import Draft202012Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource("urn:document", DRAFT202012.create_resource(document))

    def make(schema_class):
        name = openapi.REQUEST_BODIES[schema_class]
        return Draft202012Validator({"$ref": f"urn:document#/components/schemas/{name}"}, registry=registry)
    return make


@pytest.mark.parametrize("schema_class, body", RULE_SAMPLES)
def test_the_document_agrees_with_each_rule(validator_for, schema_class, body):
    accepted = not schema_class().validate(body)
    assert validator_for(schema_class).is_valid(body) == accepted, \
        f"the schema {'accepts' if accepted else 'refuses'} {body}, the document does not"


def test_the_samples_fall_on_both_sides_of_the_rules():
    verdicts = [not schema_class().validate(body) for schema_class, body in RULE_SAMPLES]
    assert verdicts.count(True) >= 12 and verdicts.count(False) >= 12


# --- answers: OpenAI's schemas, copied faithfully ------------------------------------------------

def _clean(node):
    if isinstance(node, dict):
        out = {key: _clean(value) for key, value in node.items() if not key.startswith("x-") and key != "example"}
        return {"anyOf": [out, {"type": "null"}]} if out.pop("nullable", None) is True else out
    if isinstance(node, list):
        return [_clean(item) for item in node]
    if isinstance(node, datetime.date):
        return node.isoformat()
    return node


def openai_subset() -> dict:
    """OPENAI_ROOTS and all they reference, from the vendored spec, with openapi_openai.py's three edits."""
    import yaml

    with SPEC.open("rb") as handle:
        schemas = yaml.load(handle, Loader=yaml.CSafeLoader)["components"]["schemas"]
    names: set = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    name = value.rsplit("/", 1)[1]
                    if name not in names:
                        names.add(name)
                        walk(schemas[name])
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for root in OPENAI_ROOTS:
        names.add(root)
        walk(schemas[root])
    return {name: _clean(schemas[name]) for name in sorted(names)}


def test_the_packaged_openai_schemas_are_the_vendored_ones():
    assert packaged_openai_schemas() == openai_subset()


def test_the_document_answers_with_the_openai_schemas(document):
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert chat["application/json"]["schema"] == {"$ref": "#/components/schemas/CreateChatCompletionResponse"}
    for name, schema in packaged_openai_schemas().items():
        assert components(document)[name] == schema, name


# --- served: without a key, built once -----------------------------------------------------------

def test_openapi_json_is_served_without_a_key_and_built_once(app, document):
    client = app.test_client()
    first = client.get("/openapi.json")
    cached = app.extensions["openapi"]
    keyless = client.get("/v1/models")
    again = client.get("/openapi.json")
    assert first.status_code == 200 and first.mimetype == "application/json"
    assert keyless.status_code == 401                 # the key check is live: /openapi.json is exempt from it
    assert json.loads(first.data) == json.loads(json.dumps(document))   # and the build is deterministic
    assert again.data == first.data and app.extensions["openapi"] is cached


if __name__ == "__main__":
    print(json.dumps(openai_subset(), indent=1, ensure_ascii=False))
