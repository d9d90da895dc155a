"""The log audit (log_audit.py) that runs over every gateway log of the session: it must be able to fail."""
from __future__ import annotations

import json

from .log_audit import audit, secrets_of

CLEAN = json.dumps({"ts": "t", "level": "info", "logger": "gateway", "event": "request", "message": "POST / 200"})


def line(message: str) -> str:
    return json.dumps({"event": "log", "message": message})


def test_a_clean_log_passes():
    assert audit({"a.log": CLEAN + "\n\n" + CLEAN}, {"upstream-secret-key-123"}) == []


def test_every_kind_of_leak_and_every_non_json_line_is_found():
    logs = {"a.log": "\n".join([
        line("key upstream-secret-key-123 echoed"),
        line("presented sk-abcdefghijklmnopqrstuvwxyz"),
        line("header Authorization: Bearer abcdef123456"),
        line("connecting to postgresql://gw:pa55word@db/test"),
        line("redis://:hunter22@cache:6379"),
        "Traceback (most recent call last):",
        json.dumps(["not", "a", "record"]),
    ])}
    found = [(f.line, f.what) for f in audit(logs, {"upstream-secret-key-123"})]
    assert [number for number, _ in found] == [1, 2, 3, 4, 5, 6, 7], found
    assert "configured secret" in found[0][1] and "not JSON" in found[5][1]


def test_redacted_forms_pass():
    logs = {"a.log": "\n".join([line("Bearer *** and sk-*** and sk-...abcd"), line("redis://***@cache:6379"),
                                line("postgresql://***@db/test")])}
    assert audit(logs, {"upstream-secret-key-123"}) == []


def test_secrets_come_from_the_config_and_the_environment():
    config = """
model_list:
  - model_name: a
    litellm_params: {model: openai/x, api_key: literal-upstream-key-1, extra_headers: {X-Token: header-secret-99}}
  - model_name: b
    litellm_params: {model: openai/y, api_key: os.environ/B_KEY}
general_settings:
  master_key: sk-literal-master-0000
  database_url: postgresql://gw:db-password@127.0.0.1/test
"""
    found = secrets_of(config, {"B_KEY": "value-of-b-key-77", "SHORT": "abc"})
    assert found == {"literal-upstream-key-1", "header-secret-99", "sk-literal-master-0000", "db-password",
                     "value-of-b-key-77"}
