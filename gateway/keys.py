"""Checks a presented key against the master key (virtual keys join here later).

Keys are compared as SHA-256 digests with hmac.compare_digest, so the time a
comparison takes says nothing about the key, not even its length.
"""
from __future__ import annotations

import hashlib
import hmac

from .errors import AuthenticationFailed
from .types import Principal

ANONYMOUS = Principal(name="anonymous", is_master=True)
MASTER = Principal(name="master", is_master=True)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyChecker:
    def __init__(self, master_key: str | None):
        self._master_digest = digest(master_key) if master_key else None

    @property
    def auth_enabled(self) -> bool:
        return self._master_digest is not None

    def authenticate(self, presented: str | None) -> Principal:
        if self._master_digest is None:
            return ANONYMOUS
        if not presented:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        if hmac.compare_digest(digest(presented), self._master_digest):
            return MASTER
        raise AuthenticationFailed("Incorrect API key provided.")
