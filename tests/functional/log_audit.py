"""The audit of every gateway log a test session produced: no secret in any line, every line JSON.

Secrets are taken from what each gateway was given: the literal credentials
in its config file and the values of the environment variables it was
started with; virtual keys (`sk-` and at least 16 more characters) and
Authorization values are found by their shape, whatever their value.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml

CREDENTIAL_KEYS = frozenset({"master_key", "api_key", "metrics_token", "azure_ad_token", "aws_access_key_id",
                             "aws_secret_access_key", "aws_session_token", "database_url", "redis_url"})
KEY_SHAPED = re.compile(r"sk-[A-Za-z0-9_-]{16,}")
AUTHORIZATION = re.compile(r"(?i)\b(?:bearer|basic)\s+(?!\*\*\*)[A-Za-z0-9._~+/=-]{6,}")
URL_CREDENTIALS = re.compile(r"\w+://[^/\s:@\"]*:(?!\*\*\*)[^/\s@\"]+@")


@dataclass
class Finding:
    log: str
    line: int
    what: str


def secrets_of(config_text: str, env: dict) -> set[str]:
    """The credentials a gateway was configured with, as the strings that could leak."""
    found: set[str] = {value for value in env.values() if isinstance(value, str) and len(value) >= 8}
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return found

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in CREDENTIAL_KEYS and isinstance(value, str) and not value.startswith("os.environ/"):
                    found.update(_secret_parts(key, value))
                elif key == "extra_headers" and isinstance(value, dict):
                    found.update(v for v in value.values() if isinstance(v, str) and len(v) >= 8)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(config)
    return found


def _secret_parts(key: str, value: str) -> set[str]:
    if key in ("database_url", "redis_url"):   # only the password of a URL is a secret
        match = re.match(r"\w+://[^/:@]*:([^/@]+)@", value)
        return {match.group(1)} if match and len(match.group(1)) >= 4 else set()
    return {value} if len(value) >= 8 else set()


def audit(logs: dict[str, str], secrets: set[str]) -> list[Finding]:
    """Every leak and every line that is not a JSON object with an `event`, in every log."""
    findings = []
    for name, text in logs.items():
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            for secret in secrets:
                if secret in line:
                    findings.append(Finding(name, number, f"a configured secret ({secret[:3]}…)"))
            for pattern, what in ((KEY_SHAPED, "an sk- key"), (AUTHORIZATION, "an Authorization value"),
                                  (URL_CREDENTIALS, "URL credentials")):
                if pattern.search(line):
                    findings.append(Finding(name, number, what))
            try:
                record = json.loads(line)
            except ValueError:
                findings.append(Finding(name, number, f"not JSON: {line[:120]!r}"))
                continue
            if not isinstance(record, dict) or "event" not in record:
                findings.append(Finding(name, number, f"not a log record: {line[:120]!r}"))
    return findings
