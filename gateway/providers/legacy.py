"""Legacy completions (`/v1/completions`) from providers that only chat.

LlamaIndex's `OpenAILike.complete()` and older SDK code call the legacy route;
Anthropic, Gemini and Bedrock have no such API. The prompt is asked as one user
message and the chat answer comes back in the legacy shape, whole or streamed
(chunks.ChunkWriter writes `text_completion` chunks for such a request), as the
peer does for these providers.
"""
from __future__ import annotations

from dataclasses import replace

from ..errors import InvalidRequest
from ..types import Completion, ModelRequest

# Legacy parameters a chat has no place for; NEUTRAL_VALUES in http.py lets their no-op values through.
LEGACY_ONLY = ("echo", "suffix", "best_of", "logprobs")


def as_chat(request: ModelRequest) -> ModelRequest:
    """The chat request asking the same: the prompt as one user message, the legacy-only fields left out."""
    prompt = request.params["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("Invalid value for 'prompt': this model takes one text prompt per request "
                             "(not a batch of prompts or token ids).", param="prompt")
    params = {k: v for k, v in request.params.items() if k != "prompt" and k not in LEGACY_ONLY}
    params["messages"] = [{"role": "user", "content": prompt}]
    return replace(request, endpoint="chat/completions", params=params, as_text=True)


def text_completion(answer: Completion) -> Completion:
    """A chat.completion body as the text_completion the client called for."""
    body = answer.body
    choices = [{"text": choice["message"].get("content") or "", "index": choice.get("index", i), "logprobs": None,
                "finish_reason": choice.get("finish_reason")} for i, choice in enumerate(body["choices"])]
    legacy = {"id": "cmpl-" + str(body.get("id", "")).removeprefix("chatcmpl-"), "object": "text_completion",
              "created": body["created"], "model": body["model"], "choices": choices}
    if "usage" in body:
        legacy["usage"] = body["usage"]
    return Completion(legacy, answer.usage)
