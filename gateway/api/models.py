"""GET /v1/models and /v1/models/{id}: the model names this key may use."""
from flask import Blueprint

from .auth import authenticated, service
from .streaming import json_response

bp = Blueprint("models", __name__)


@bp.get("/models")
@authenticated
def list_models(principal):
    return json_response({"object": "list", "data": service().models(principal)})


@bp.get("/models/<path:model_id>")
@authenticated
def get_model(principal, model_id):
    return json_response(service().model(principal, model_id))
