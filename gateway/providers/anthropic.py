"""The adapter for Anthropic's Messages API (`anthropic/<model>`): OpenAI chat in, Messages out, and back.

Only the translation lives here; sending, pooling, timeouts, stream framing and
the error table are the HTTP base's. The request translation is a handful of
pure functions (OpenAI request → Messages body). The stream translator does one
`orjson.loads` per event and writes one OpenAI chunk for it; everything it can
know beforehand (URL, headers, credentials, the dispatch table) is fixed at
start-up.

Choices made where OpenAI and Anthropic differ:
  * `max_tokens` is required by Anthropic: the client's `max_completion_tokens`,
    else its `max_tokens`, else the deployment's `model_info.max_tokens` (the
    operator's word for what the model may write), else 4096.
  * `temperature` above 1 (OpenAI allows up to 2) is sent as 1, as Anthropic's own
    OpenAI layer does, rather than refused: a client tuned for OpenAI keeps working.
  * JSON mode (`response_format: json_object`) forces one tool whose input is any
    JSON object, and that input is the answer's text (streamed as text deltas);
    with tools of the client's own, use `json_schema` (output_config.format).
  * Parameters Anthropic has no meaning for (n > 1, logprobs, penalties, seed,
    vendor extras other than `top_k`, …) are refused with
    400, or left out when `drop_params` is set; nothing is silently ignored.
    `user` (or OpenAI's newer `safety_identifier`) becomes `metadata.user_id`.
  * `tool_choice` without `tools` is left out (it can choose nothing), and
    `parallel_tool_calls: false` becomes `disable_parallel_tool_use` on it.
  * The answer's `id` is Anthropic's message id (`msg_…`), so a reply can be found
    in Anthropic's console; the stream's chunks carry the same id.
"""
from __future__ import annotations

import orjson

from ..errors import BadUpstreamResponse, InvalidRequest
from ..types import Completion, Usage
from .auth import HeaderAuth
from .chunks import (JSON_TOOL, JSON_TOOL_DESCRIPTION, ChunkWriter, add_turn, chat_completion, image_source,
                     json_mode, text_of, tool_arguments, tool_call, usage_dict)
from .failures import (AUTH, CONTEXT_LENGTH, OVERLOADED, RATE_LIMITED, SERVER, TIMEOUT, StreamFailure,
                       UpstreamError, has_signal)
from .http import HTTPProvider, error_fields

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
EMPTY_SCHEMA = {"type": "object", "properties": {}}
JSON_TOOL_SPEC = {"name": JSON_TOOL, "description": JSON_TOOL_DESCRIPTION, "input_schema": {"type": "object"}}

# OpenAI parameters with no Anthropic counterpart (the drop-or-400 list of providers.md §1.2).
UNSUPPORTED = ("n", "logprobs", "top_logprobs", "logit_bias", "presence_penalty", "frequency_penalty", "seed",
               "prediction", "audio", "modalities", "store", "metadata", "service_tier", "functions",
               "function_call", "reasoning_effort", "prompt_cache_key", "web_search_options")
# Fields outside OpenAI's schema (request.extra) that do mean something here.
ACCEPTED_EXTRAS = frozenset({"top_k", "safety_identifier"})

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}

# Anthropic's error types: the status each stands for (an error event inside a stream
# arrives with HTTP 200) and, where the status alone would not say it, its kind.
ERROR_TYPES = {
    "invalid_request_error": (400, None),
    "authentication_error": (401, AUTH),
    "permission_error": (403, AUTH),
    "billing_error": (402, None),
    "not_found_error": (404, None),
    "request_too_large": (413, None),
    "rate_limit_error": (429, RATE_LIMITED),
    "api_error": (500, SERVER),
    "timeout_error": (504, TIMEOUT),
    "overloaded_error": (529, OVERLOADED),
}
# How a 400 says the prompt does not fit the context window ("prompt is too long: 208310 tokens >
# 200000 maximum", "input length and `max_tokens` exceed context limit: 197202 + 21333 > 200000, …").
CONTEXT_SIGNALS = ("prompt is too long", "exceed context limit", "exceeds context limit", "context window",
                   "input is too long")


class AnthropicAdapter(HTTPProvider):
    label = "Anthropic"
    default_base = "https://api.anthropic.com"
    keepalive_events = frozenset({"ping"})

    def url(self, deployment, base: str, endpoint: str, stream: bool) -> str:
        base = base.rstrip("/")
        if base.endswith("/v1/messages"):
            return base
        return base + ("/messages" if base.endswith("/v1") else "/v1/messages")

    def headers(self, deployment) -> dict:
        return {"anthropic-version": API_VERSION}

    def auth(self, deployment):
        return HeaderAuth("x-api-key", deployment.api_key) if deployment.api_key else None

    def request_body(self, deployment, request, stream: bool) -> dict:
        params, extra = request.params, request.extra
        dropped = self.refuse_unsupported(deployment, request, _unsupported_names(request))
        system, messages = translate_messages(params["messages"])
        body = {"model": deployment.upstream_model,
                "max_tokens": params.get("max_completion_tokens") or params.get("max_tokens")
                or deployment.max_tokens or DEFAULT_MAX_TOKENS,
                "messages": messages}
        if system:
            body["system"] = system
        if params.get("temperature") is not None:
            body["temperature"] = min(params["temperature"], 1)
        if params.get("top_p") is not None:
            body["top_p"] = params["top_p"]
        if extra.get("top_k") is not None:
            body["top_k"] = extra["top_k"]
        stop = params.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if params.get("tools"):
            body["tools"] = translate_tools(params["tools"])
            choice = translate_tool_choice(params.get("tool_choice"), params.get("parallel_tool_calls"))
            if choice is not None:
                body["tool_choice"] = choice
        if json_mode(request.params):
            if params.get("tools"):
                raise InvalidRequest("response_format 'json_object' cannot be combined with tools on Anthropic: "
                                     "use 'json_schema' instead.", param="response_format")
            body["tools"] = [JSON_TOOL_SPEC]
            body["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        user = params.get("user") or extra.get("safety_identifier")
        if user:
            body["metadata"] = {"user_id": user}
        response_format = params.get("response_format")
        if response_format and "response_format" not in dropped:
            output_format = translate_response_format(response_format)
            if output_format is not None:
                body["output_config"] = {"format": output_format}
        if stream:
            body["stream"] = True
        return body

    def completion(self, deployment, request, body) -> Completion:
        if not isinstance(body, dict) or body.get("type") != "message" or not isinstance(body.get("content"), list):
            raise BadUpstreamResponse(f"the upstream sent an answer that is not an Anthropic message "
                                      f"(deployment {deployment.id})")
        texts, calls = [], []
        as_json = json_mode(request.params)
        for block in body["content"]:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and not as_json:
                texts.append(block.get("text") or "")
            elif kind == "tool_use" and as_json and block.get("name") == JSON_TOOL:
                texts.append(orjson.dumps(block.get("input") or {}).decode())
            elif kind == "tool_use":
                calls.append(tool_call(block.get("id") or "", block.get("name") or "",
                                       orjson.dumps(block.get("input") or {}).decode()))
        usage = openai_usage(body.get("usage"))
        message = {"content": "".join(texts) if texts else None, "tool_calls": calls}
        reason = "stop" if as_json and body.get("stop_reason") == "tool_use" else finish_reason(body.get("stop_reason"))
        answer = chat_completion(request.model, message, reason, usage,
                                 id=body.get("id") if isinstance(body.get("id"), str) else None)
        return Completion(answer, Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]))

    def translator(self, deployment, request, out: ChunkWriter) -> "MessagesStream":
        return MessagesStream(out, json_mode(request.params))

    def describe_error(self, status: int, content: bytes, headers) -> UpstreamError:
        return upstream_error(error_fields(content), status)

    def in_band_error(self, body: dict) -> UpstreamError | None:
        """`{"type": "error", …}` sent with HTTP 200 (instead of a stream): the status its type names."""
        error = body.get("error")
        return upstream_error(error, None) if body.get("type") == "error" and isinstance(error, dict) else None


# --- OpenAI request → Messages request (pure) -----------------------------------------------------

def _unsupported_names(request) -> tuple[str, ...]:
    """What to hand to refuse_unsupported: the fixed list and unknown extras."""
    return UNSUPPORTED + tuple(name for name in request.extra if name not in ACCEPTED_EXTRAS)



def translate_messages(messages) -> tuple[str, list]:
    """OpenAI messages → (Anthropic `system` text, `messages`).

    System and developer messages are hoisted into `system`, joined with "\\n".
    Tool results become `tool_result` blocks of a user turn; consecutive turns
    of one role are merged into one (so all results of one assistant turn share
    one user message, as Anthropic requires, tool results first).
    """
    system: list[str] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        if role == "user":
            content = user_content(message.get("content"), f"messages[{i}].content")
        elif role == "assistant":
            content = assistant_content(message, i)
            if not content:
                continue   # nothing said (Anthropic refuses empty turns)
        elif role == "tool":
            role = "user"
            content = [{"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                        "content": text_of(message.get("content"))}]
        else:
            raise InvalidRequest(f"Messages with role '{role}' are not supported by Anthropic: "
                                 f"use tools and tool messages.", param=f"messages[{i}].role")
        if turns and turns[-1]["role"] == role:   # merged: plain-text content becomes blocks first
            turns[-1]["content"], content = _blocks(turns[-1]["content"]), _blocks(content)
        add_turn(turns, role, content, "content")
    return "\n".join(system), turns


def _blocks(content) -> list:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def user_content(content, path: str):
    """A user message's content: a string stays a string, parts become text and image blocks."""
    if isinstance(content, str):
        return content
    blocks = []
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        if kind in ("text", "input_text"):
            if not part.get("text"):
                continue   # Anthropic refuses empty text blocks
            block = {"type": "text", "text": part["text"]}
        elif kind == "image_url":
            block = image_block(part["image_url"]["url"], f"{path}[{j}].image_url.url")
        else:
            raise InvalidRequest(f"Content parts of type '{kind}' are not supported by Anthropic.",
                                 param=f"{path}[{j}].type")
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]   # Anthropic prompt caching, as LiteLLM passes it
        blocks.append(block)
    return blocks


def image_block(url: str, path: str) -> dict:
    """`data:` URLs go as base64 with their media type, http(s) URLs as URL sources."""
    source = image_source(url, path)
    if source is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": source[0], "data": source[1]}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"Invalid value for '{path}': Anthropic takes images as http(s) or base64 data URLs.",
                         param=path)


def assistant_content(message: dict, i: int):
    """Text (a string when alone) and `tool_use` blocks whose `input` is the parsed `arguments`."""
    text = text_of(message.get("content"))
    calls = message.get("tool_calls")
    if not calls:
        return text
    blocks = [{"type": "text", "text": text}] if text else []
    for j, call in enumerate(calls):
        function = call.get("function") or {}
        if call.get("type") != "function":
            raise InvalidRequest(f"Tool calls of type '{call.get('type')}' are not supported by Anthropic.",
                                 param=f"messages[{i}].tool_calls[{j}].type")
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                       "input": tool_arguments(function.get("arguments"),
                                               f"messages[{i}].tool_calls[{j}].function.arguments")})
    return blocks


def translate_tools(tools) -> list:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise InvalidRequest(f"Tools of type '{tool.get('type')}' are not supported by Anthropic.",
                                 param=f"tools[{i}].type")
        function = tool["function"]
        schema = function.get("parameters") or EMPTY_SCHEMA
        spec = {"name": function["name"],
                "input_schema": schema if "type" in schema else {"type": "object", **schema}}
        if function.get("description"):
            spec["description"] = function["description"]
        if function.get("strict") is True:
            spec["strict"] = True
        out.append(spec)
    return out


def translate_tool_choice(choice, parallel) -> dict | None:
    """auto → auto, required → any, none → none, a named function → tool; `parallel_tool_calls: false`
    → `disable_parallel_tool_use` (which needs a tool_choice object: auto when none was given)."""
    if choice is None:
        result = None
    elif isinstance(choice, str):
        result = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif choice.get("type") == "function":
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest(f"tool_choice of type '{choice.get('type')}' is not supported by Anthropic.",
                             param="tool_choice")
    if parallel is False:
        result = result or {"type": "auto"}
        if result["type"] != "none":
            result["disable_parallel_tool_use"] = True
    return result


def translate_response_format(response_format: dict) -> dict | None:
    """`json_schema` → output_config.format; `text` and `json_object` (a forced tool, see JSON_TOOL) → nothing."""
    if response_format.get("type") != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("Anthropic needs the JSON schema itself: set 'response_format.json_schema.schema'.",
                             param="response_format.json_schema.schema")
    return {"type": "json_schema", "schema": schema}


# --- Messages answers → OpenAI (pure) -------------------------------------------------------------

def finish_reason(stop_reason) -> str:
    """Anthropic's stop_reason as OpenAI's finish_reason; one added after this was written counts as stop."""
    return FINISH_REASONS.get(stop_reason, "stop")


def openai_usage(usage) -> dict:
    """OpenAI counts cache reads and writes in prompt_tokens; Anthropic's input_tokens excludes both."""
    if not isinstance(usage, dict):
        usage = {}
    cached = usage.get("cache_read_input_tokens")
    cached = cached if _is_count(cached) else None
    prompt = _count(usage.get("input_tokens")) + _count(usage.get("cache_creation_input_tokens")) + (cached or 0)
    return usage_dict(prompt, _count(usage.get("output_tokens")), cached=cached)


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _count(value) -> int:
    return value if _is_count(value) else 0


def upstream_error(error: dict, status: int | None) -> UpstreamError:
    """An Anthropic error object as UpstreamError; `status` None (an error event in a stream, sent
    with HTTP 200) takes the status its type stands for."""
    kind_name = error.get("type") if isinstance(error.get("type"), str) else None
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    named_status, kind = ERROR_TYPES.get(kind_name, (None, None))
    if status is None or status < 400:
        status = named_status or 502
    if kind is None and status == 529:
        kind = OVERLOADED   # an overload answered by something in front of the API, without a body
    if status == 400 and has_signal(message, CONTEXT_SIGNALS):
        kind = CONTEXT_LENGTH
    return UpstreamError(status, message, kind)


# --- the stream ------------------------------------------------------------------------------------

class MessagesStream:
    """Anthropic stream events → OpenAI chunks.

    Tool calls get their own index (0, 1, …) by content block, since a text
    block usually comes first; `message_delta` carries the stop reason and the
    cumulative output tokens, `message_stop` ends the stream (and brings the
    usage chunk). Pings, thinking and signature deltas carry nothing for an
    OpenAI client and are dropped.
    """
    __slots__ = ("out", "done", "_tools", "_usage", "_finished", "_json_mode", "_json_block")

    def __init__(self, out: ChunkWriter, json_mode: bool = False):
        self.out = out
        self.done = False
        self._tools: dict = {}     # Anthropic content block index → OpenAI tool call index
        self._usage: dict = {}
        self._finished = False
        self._json_mode = json_mode
        self._json_block = None    # the block of the JSON_TOOL call, whose input is the answer's text

    def feed(self, event):
        """One event → its chunks. Malformed events raise KeyError/TypeError/ValueError, which the
        base reports as an upstream answer of an unexpected shape."""
        name, data = event
        handler = _HANDLERS.get(name) if name else None
        if handler is None:
            if name:
                return ()   # ping, content_block_stop, and event types added after this was written
            message = orjson.loads(data)   # no `event:` line: the type inside says what it is
            handler = _HANDLERS.get(message.get("type"))
            return handler(self, message) if handler is not None else ()
        return handler(self, orjson.loads(data))

    def end(self):
        return ()

    def _message_start(self, event: dict):
        message = event.get("message") or {}
        if isinstance(message.get("id"), str):
            self.out.id = message["id"]
        self._usage = dict(message.get("usage") or {})
        return (self.out.role(),)

    def _block_start(self, event: dict):
        block = event["content_block"]
        kind = block.get("type")
        if kind == "tool_use" and self._json_mode and block.get("name") == JSON_TOOL:
            self._json_block = event["index"]
            return (self.out.text(orjson.dumps(block["input"]).decode()),) if block.get("input") else ()
        if kind == "tool_use":
            index = self._tools[event["index"]] = len(self._tools)
            arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
            return (self.out.tool_call(index, id=block["id"], name=block["name"], arguments=arguments),)
        if kind == "text" and block.get("text") and not self._json_mode:
            return (self.out.text(block["text"]),)
        return ()

    def _block_delta(self, event: dict):
        delta = event["delta"]
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta["text"]   # in JSON mode only the tool's input is the answer
            return (self.out.text(text),) if text and not self._json_mode else ()
        if kind == "input_json_delta" and event["index"] == self._json_block:
            return (self.out.text(delta["partial_json"]),) if delta["partial_json"] else ()
        if kind == "input_json_delta":
            partial = delta["partial_json"]
            index = self._tools.get(event["index"])
            return (self.out.tool_call(index, arguments=partial),) if partial and index is not None else ()
        return ()   # thinking, signature and citations deltas

    def _message_delta(self, event: dict):
        usage = event.get("usage")
        if usage:
            self._usage.update((key, value) for key, value in usage.items() if value is not None)
        stop_reason = (event.get("delta") or {}).get("stop_reason")
        if stop_reason is None or self._finished:
            return ()
        self._finished = True
        if self._json_block is not None and stop_reason == "tool_use":
            return (self.out.finish("stop"),)
        return (self.out.finish(finish_reason(stop_reason)),)

    def _message_stop(self, event: dict):
        self.done = True
        chunks = [] if self._finished else [self.out.finish("stop")]
        self._finished = True
        chunks.append(self.out.usage(openai_usage(self._usage)))
        return chunks

    def _error(self, event: dict):
        error = event.get("error")
        raise StreamFailure(upstream_error(error if isinstance(error, dict) else {}, None))


_HANDLERS = {
    "message_start": MessagesStream._message_start,
    "content_block_start": MessagesStream._block_start,
    "content_block_delta": MessagesStream._block_delta,
    "message_delta": MessagesStream._message_delta,
    "message_stop": MessagesStream._message_stop,
    "error": MessagesStream._error,
}
