"""Who is calling: the key from `Authorization: Bearer`, `api-key` or `x-api-key`."""
from __future__ import annotations

from functools import wraps

from flask import current_app, request

from ..errors import AdminOnly


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


def master_only(view):
    """Admin routes: no or unknown key → 401 as `authenticated` answers; a valid virtual key → 403.

    The view gets no principal: only the master key (or anyone, when auth is off) gets this far.
    """
    @wraps(view)
    def wrapper(*args, **kwargs):
        if not service().authenticate(presented_key(request.headers)).is_master:
            raise AdminOnly("Only the master key may use this route.")
        return view(*args, **kwargs)
    return wrapper


def service():
    return current_app.extensions["gateway"]
