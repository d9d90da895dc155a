"""POST /v1/completions, the legacy endpoint (LlamaIndex `OpenAILike.complete` uses it)."""
from flask import Blueprint

from .auth import authenticated
from .schemas import CompletionSchema
from .streaming import respond
from .validation import validated

bp = Blueprint("completions", __name__)


@bp.post("/completions")
@authenticated
@validated(CompletionSchema(), "completions")
def create(call, principal):
    return respond(principal, call)
