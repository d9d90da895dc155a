"""Who is calling: the key from `Authorization: Bearer`, `api-key` or `x-api-key`."""
from __future__ import annotations

from functools import wraps

from flask import current_app, request


def presented_key(headers) -> str | None:
    """The key of `Authorization: Bearer`, else of `api-key` (Azure SDKs) or `x-api-key` (Anthropic's).

    A bare `Authorization: <key>` or another scheme is not read as a key: a
    proxy or a browser may put credentials of its own there.
    """
    scheme, _, value = (headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("api-key") or headers.get("x-api-key")


def authenticated(view):
    """Pass the caller's Principal as the view's first argument, or answer 401."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        principal = current_app.extensions["gateway"].authenticate(presented_key(request.headers))
        return view(principal, *args, **kwargs)
    return wrapper


def service():
    return current_app.extensions["gateway"]
