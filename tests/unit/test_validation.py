"""gateway/api/validation.py: the edge checks, seen through the Flask test client of a real app."""
from __future__ import annotations

import pytest

from gateway import create_app
from gateway.providers import ADAPTERS
from gateway.settings import load_settings

CONFIG = """\
model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
general_settings:
  max_request_body_mb: 0.01
"""


@pytest.fixture
def client(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    app = create_app(settings=load_settings(path, providers=ADAPTERS, environ={}))
    return app.test_client()


def chat(client, body=None, **kwargs):
    return client.post("/v1/chat/completions", json=body, **kwargs)


def error_of(response) -> dict:
    assert response.is_json, response.data
    return response.get_json()["error"]


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "aws_secret_access_key", "aws_anything",
                                   "extra_headers", "organization", "litellm_params", "api_version"])
def test_credential_and_url_fields_are_refused_by_name(client, field):
    response = chat(client, {"model": "mock", "messages": [{"role": "user", "content": "hi"}], field: "x"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == field and field in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ({"model": "mock", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "mock", "messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}]},
     "messages[1].tool_call_id"),
    ({"model": "mock", "messages": [{"role": "user", "content": "a"}], "temperature": "0.7"}, "temperature"),
    ({"model": "mock", "messages": [{"role": "user", "content": "a"}],
      "tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"messages": [{"role": "user", "content": "a"}]}, "model"),
])
def test_the_first_failing_field_path_is_the_param(client, body, param):
    response = chat(client, body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param, error
    assert param in error["message"]
    assert "Missing data for required field" not in error["message"]


@pytest.mark.parametrize("data, content_type, status", [
    (b"{not json", "application/json", 400),
    (b"", "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b'"text"', "application/json", 400),
    (b'{"model": "mock"}', "text/plain", 415),
])
def test_bodies_that_are_not_a_json_object(client, data, content_type, status):
    response = client.post("/v1/chat/completions", data=data, content_type=content_type)
    assert response.status_code == status
    assert error_of(response)["type"] == "invalid_request_error"


def test_a_json_body_without_content_type_is_accepted(client):
    response = client.post("/v1/chat/completions", data=b'{"model": "mock", "messages": '
                                                         b'[{"role": "user", "content": "hi"}]}')
    assert response.status_code == 200, response.data


def test_a_body_over_the_limit_is_413(client):
    big = "x" * (20 * 1024)
    response = chat(client, {"model": "mock", "messages": [{"role": "user", "content": big}]})
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_a_valid_request_reaches_the_model(client):
    response = chat(client, {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "top_k": 3})
    assert response.status_code == 200
    assert response.get_json()["choices"][0]["message"]["content"] == "Mock answer to: hello"


def test_embeddings_never_stream_even_if_the_body_asks(client):
    """`stream` is not an embeddings parameter: it goes upstream as an extra, the answer stays JSON."""
    response = client.post("/v1/embeddings", json={"model": "mock", "input": "hi", "stream": True})
    assert response.status_code == 200, response.data
    assert response.mimetype == "application/json"
    assert response.json["data"][0]["object"] == "embedding"
