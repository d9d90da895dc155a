"""GET /metrics: Prometheus text, summed over every worker; behind `metrics_token` when one is set."""
from flask import Blueprint, Response, request

from .auth import presented_key, service

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    return Response(service().metrics_text(presented_key(request.headers)),
                    content_type="text/plain; version=0.0.4; charset=utf-8")
