"""gateway/redact.py: credentials never leave the process in text."""
from __future__ import annotations

import pytest

from gateway.redact import Redactor

UPSTREAM_KEY = "upstream-secret-key-123"
AWS_KEY_ID = "AKIAEXAMPLE1234567"


@pytest.fixture
def redact():
    return Redactor([UPSTREAM_KEY, AWS_KEY_ID, "", None])


@pytest.mark.parametrize("text, secret", [
    ("Incorrect API key provided: upstream-secret-key-123.", UPSTREAM_KEY),
    ("echo upstream-secret-key-123upstream-secret-key-123", UPSTREAM_KEY),
    ("Credential=AKIAEXAMPLE1234567/20240101/us-east-1/bedrock/aws4_request", AWS_KEY_ID),
])
def test_known_secrets_are_replaced_wherever_they_stand(redact, text, secret):
    out = redact(text)
    assert secret not in out
    assert "***" in out


@pytest.mark.parametrize("text, leaked", [
    ("Authorization: Bearer sk-abc123456789", "sk-abc123456789"),
    ("authorization: bearer abcdefgh1234", "abcdefgh1234"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ("bad key sk-proj-abcdefghijk in request", "sk-proj-abcdefghijk"),
    ("virtual key sk-Zx9_8-7abcdef expired", "sk-Zx9_8-7abcdef"),
    ("GET https://user:pa55word@llm.internal/v1 failed", "pa55word"),
    ("see https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key=AIzaSyD-abcdef",
     "AIzaSyD-abcdef"),
    ('{"api_key": "verysecretvalue"}', "verysecretvalue"),
    ("x-api-key: sk-ant-api03-xyz", "sk-ant-api03-xyz"),
    ("api-key: 0123456789abcdef", "0123456789abcdef"),
    ("token=abcd1234efgh", "abcd1234efgh"),
    ("password: hunter2hunter", "hunter2hunter"),
])
def test_credential_shaped_text_is_redacted_by_pattern(text, leaked):
    out = Redactor()(text)
    assert leaked not in out, out


@pytest.mark.parametrize("text", [
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
    "max_tokens=4096 is too large",
    "Invalid value for 'temperature': must be between 0 and 2.",
    "the upstream answered HTTP 500 (deployment 1a2b3c4d5e6f)",
    "monkey=banana",
])
def test_ordinary_messages_are_left_alone(text):
    assert Redactor([UPSTREAM_KEY])(text) == text


def test_longest_secret_is_replaced_first():
    redact = Redactor(["abcd", "abcdefgh-long-secret"])
    assert redact("value abcdefgh-long-secret end") == "value *** end"


def test_empty_text():
    assert Redactor([UPSTREAM_KEY])("") == ""


def test_a_url_password_without_a_user_is_redacted(redact):
    out = redact("Redis at redis://:hunter22@cache:6379/0 is unreachable")
    assert "hunter22" not in out and "cache:6379" in out
