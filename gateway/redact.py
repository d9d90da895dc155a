"""Strip credentials from any text that may leave the process (error messages, logs).

Known secrets (every key in the config) are replaced exactly; credential-shaped
tokens (bearer values, `sk-…` keys, URL user-info, `key=` query values) are
replaced by pattern, so an upstream that echoes a key back never leaks it.
"""
from __future__ import annotations

import re
from typing import Iterable

_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}")
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{6,}")
_ASSIGNED = re.compile(r"(?i)\b(api[-_]?key|x-api-key|key|token|secret|password)([\"']?\s*[:=]\s*[\"']?)"
                       r"[^\s\"'&,})\]]{4,}")
_URL_USER = re.compile(r"(?i)(\w+://)[^/\s:@]*:[^/\s@]+@")   # user:password@, the user may be empty


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        # Each pattern runs only on a text holding a word it needs: a substring test is one C
        # loop, where a case-insensitive pattern is tried at every position (this runs on every log line).
        lower = text.lower()
        if "bearer" in lower or "basic" in lower:
            text = _BEARER.sub(r"\1 ***", text)
        if "sk-" in text:
            text = _SK_KEY.sub("sk-***", text)
        if "key" in lower or "token" in lower or "secret" in lower or "password" in lower:
            text = _ASSIGNED.sub(r"\1\2***", text)
        if "@" in text:
            text = _URL_USER.sub(r"\1***@", text)
        return text
