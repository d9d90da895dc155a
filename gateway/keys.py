"""Checks a presented key: the master key, else a virtual key from the database, cached briefly per worker.

Keys are compared as SHA-256 digests with hmac.compare_digest, so the time a
comparison takes says nothing about the key, not even its length. A virtual
key's digest is also what the database stores: the plaintext never leaves
this function.

The cache trades at most `ttl` seconds of staleness (a revoked key stops
working in every worker within it) for one database read per key per worker
per `ttl`. When the database fails, keys read within `grace` keep their last
answer, and nothing else is asked of the database for a second: a database
outage costs new keys a 503, never a valid key a 401.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Callable

from .errors import AuthenticationFailed, StorageUnavailable
from .types import KeyRecord, Principal

ANONYMOUS = Principal(name="anonymous", is_master=True)
MASTER = Principal(name="master", is_master=True)
TTL = 0.5              # seconds a cached answer is trusted while the database answers
GRACE = 600.0          # seconds a cached answer still serves while the database does not
RETRY_AFTER_FAILURE = 1.0
CACHE_SIZE = 10_000


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def token_of(key: str) -> str:
    """What the database stores for a virtual key: the hex SHA-256 of its plaintext."""
    return digest(key).hex()


class _Entry:
    __slots__ = ("principal", "fetched")

    def __init__(self, principal: Principal | None, fetched: float):
        self.principal, self.fetched = principal, fetched


class KeyChecker:
    def __init__(self, master_key: str | None, database=None, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, ttl: float = TTL, grace: float = GRACE):
        self._master_digest = digest(master_key) if master_key else None
        self._database = database
        self._clock, self._wall = clock, wall
        self._ttl, self._grace = ttl, grace
        self._cache: dict[str, _Entry] = {}
        self._database_down_until = 0.0

    @property
    def auth_enabled(self) -> bool:
        return self._master_digest is not None

    def is_master(self, presented: str) -> bool:
        """Is this the master key? In constant time, and without a database lookup."""
        return self._master_digest is not None and hmac.compare_digest(digest(presented), self._master_digest)

    def authenticate(self, presented: str | None) -> Principal:
        if self._master_digest is None:
            return ANONYMOUS
        if not presented:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
        presented_digest = digest(presented)
        if hmac.compare_digest(presented_digest, self._master_digest):
            return MASTER
        if self._database is None or not presented.startswith("sk-"):
            raise AuthenticationFailed("Incorrect API key provided.")
        principal = self._virtual(presented_digest.hex())
        key = principal.key if principal else None
        if key is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if key.blocked:
            raise AuthenticationFailed("This key is blocked.")
        if key.expires is not None and key.expires <= self._wall():
            raise AuthenticationFailed("This key has expired.")
        return principal

    def forget(self, token: str) -> None:
        """This worker sees a change it made itself at once (other workers within `ttl`)."""
        self._cache.pop(token, None)

    def _virtual(self, token: str) -> Principal | None:
        now = self._clock()
        entry = self._cache.get(token)
        if entry is not None and now - entry.fetched < self._ttl:
            return entry.principal
        if now >= self._database_down_until:
            try:
                record = self._database.get_key(token)
            except StorageUnavailable:
                self._database_down_until = now + RETRY_AFTER_FAILURE
            else:
                self._remember(token, _Entry(_principal(record) if record else None, now))
                return self._cache[token].principal
        if entry is not None and now - entry.fetched < self._grace:
            return entry.principal
        raise StorageUnavailable("The gateway cannot check this key right now (its database is unreachable); "
                                 "try again shortly.", retry_after=RETRY_AFTER_FAILURE)

    def _remember(self, token: str, entry: _Entry) -> None:
        cache = self._cache
        cache.pop(token, None)          # re-inserted last: the dict's order is the eviction order
        if len(cache) >= CACHE_SIZE:
            for stale in list(cache)[:CACHE_SIZE // 10]:
                del cache[stale]
        cache[token] = entry


ALL_MODELS = "all-proxy-models"     # the peer's way of writing "every model" in `models`


def _principal(record: KeyRecord) -> Principal:
    models = frozenset(record.models)
    return Principal(name=record.key_alias or record.key_name,
                     models=None if not models or ALL_MODELS in models else models, key=record)
