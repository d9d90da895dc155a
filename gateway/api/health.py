"""Liveness and readiness probes (no auth: load balancers and systemd call them)."""
from flask import Blueprint

from .auth import service
from .streaming import json_response

bp = Blueprint("health", __name__)


@bp.get("/health/liveliness")
@bp.get("/health/liveness")
def liveliness():
    return json_response({"status": "alive"})


@bp.get("/health/readiness")
def readiness():
    checks = service().readiness()
    ready = all(state == "ok" for state in checks.values())
    return json_response({"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503)
