"""Liveness and readiness probes (no auth: load balancers and systemd call them), and the
master-only `GET /health`, which probes every deployment."""
from flask import Blueprint

from ..errors import PermissionDenied
from .auth import authenticated, service
from .streaming import json_response

bp = Blueprint("health", __name__)


@bp.get("/health")
@authenticated
def health(principal):
    """Which deployments answer: model names, deployment ids and bases, never a credential."""
    if not principal.is_master:
        raise PermissionDenied("Only the master key may see deployment health.", code="master_key_required")
    return json_response(service().health())


@bp.get("/health/liveliness")
@bp.get("/health/liveness")
def liveliness():
    return json_response({"status": "alive"})


@bp.get("/health/readiness")
def readiness():
    ready, body = service().readiness()
    # every 503 carries Retry-After: a balancer that honours it asks again in a second
    return json_response(body, 200, None) if ready else json_response(body, 503, {"Retry-After": "1"})
