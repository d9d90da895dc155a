"""POST /v1/embeddings."""
from flask import Blueprint

from .auth import authenticated
from .schemas import EmbeddingSchema
from .streaming import respond
from .validation import validated

bp = Blueprint("embeddings", __name__)


@bp.post("/embeddings")
@authenticated
@validated(EmbeddingSchema(), "embeddings")
def create(call, principal):
    return respond(principal, call)
