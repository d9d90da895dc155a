"""Strip credentials from any text that may leave the process (error messages, logs).

Known secrets (every key in the config) are replaced exactly; credential-shaped
tokens (bearer values, `sk-…` keys, URL user-info, `key=` query values) are
replaced by pattern, so an upstream that echoes a key back never leaks it.
"""
from __future__ import annotations

import re
from typing import Iterable

_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-***"),
    (re.compile(r"(?i)\b(api[-_]?key|x-api-key|key|token|secret|password)([\"']?\s*[:=]\s*[\"']?)[^\s\"'&,})\]]{4,}"),
     r"\1\2***"),
    (re.compile(r"(?i)(\w+://)[^/\s:@]+:[^/\s@]+@"), r"\1***@"),
)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text
