"""POST /v1/chat/completions (JSON or SSE)."""
from flask import Blueprint

from .auth import authenticated
from .schemas import ChatCompletionSchema
from .streaming import respond
from .validation import validated

bp = Blueprint("chat", __name__)


@bp.post("/chat/completions")
@authenticated
@validated(ChatCompletionSchema(), "chat/completions")
def create(call, principal):
    return respond(principal, call)
