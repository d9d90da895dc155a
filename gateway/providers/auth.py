"""Upstream credentials as requests AuthBase objects, built once per deployment.

Keeping the key in an AuthBase (not in a shared headers dict) means a
credential is attached at the last moment, to one request, and never lands in
anything that is logged or reused.
"""
from __future__ import annotations

from requests.auth import AuthBase


class HeaderAuth(AuthBase):
    """Sets one header to a fixed secret value: `Authorization: Bearer …`, `api-key: …`, `x-api-key: …`."""

    def __init__(self, header: str, value: str):
        self.header = header
        self._value = value

    def __call__(self, request):
        request.headers[self.header] = self._value
        return request

    def __repr__(self) -> str:
        return f"HeaderAuth({self.header!r}, '***')"


def bearer(key: str | None) -> HeaderAuth | None:
    return HeaderAuth("Authorization", f"Bearer {key}") if key else None
