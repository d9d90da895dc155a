"""Google Gemini (Generative Language API): OpenAI chat and embeddings ↔ generateContent / batchEmbedContents.

`gemini/<model>` posts to `{api_base}/models/<model>:generateContent`, or
`:streamGenerateContent?alt=sse` for streams, with the key in the
`x-goog-api-key` header (never `?key=`: URLs end up in logs and traces).

Choices made where Gemini and OpenAI differ:
* System and developer messages, wherever they stand, become `systemInstruction`.
* Images: `data:` URLs are sent inline; `gs://` and Files API URIs as `fileData`;
  any other URL is a 400 naming the part, since Gemini does not fetch the web for us.
* Tool results need the function's name, which OpenAI tool messages lack: it is
  taken from the earlier assistant tool call with the same id.
* A function call's `thoughtSignature` must come back with the call in the next
  turn (Gemini 3 refuses a history without it). OpenAI clients only echo the call
  id, so the signature rides inside it: `call_<hex>__ts_<base64url signature>`,
  characters every client and upstream accepts in a tool-call id. Ids are not sent
  to Gemini, which pairs calls and results by name and order.
* Thought parts, executed code and generated media are dropped: OpenAI's chat shape has no place for them.
* A stream with `n` > 1 is refused (or `n` dropped): its chunks carry one choice.
* Streams end without a terminator: the finish and usage chunks are written when the
  body ends, from the last `finishReason` and the last (cumulative) `usageMetadata`.
"""
from __future__ import annotations

import base64
import mimetypes
import secrets
import struct
from urllib.parse import quote

import orjson

from ..errors import RETRY_AFTER_MAX, BadUpstreamResponse, InvalidRequest
from ..tokens import estimate_completion_tokens, estimate_prompt_tokens
from ..types import Completion, Deployment, ModelRequest, Usage
from .auth import HeaderAuth
from .chunks import ChunkWriter, add_turn, chat_completion, image_source, text_of, tool_arguments, tool_call, usage_dict
from .failures import AUTH, CONTEXT_LENGTH, OVERLOADED, RATE_LIMITED, SERVER, TIMEOUT, StreamFailure, \
    UpstreamError, has_signal
from .http import MAX_EVENT, HTTPProvider, error_fields
from .sse import EventTooLarge, SSEDecoder

DEFAULT_BASE = "https://generativelanguage.googleapis.com/v1beta"
FILES_API_PREFIX = "https://generativelanguage.googleapis.com/"

# OpenAI parameters with no Gemini meaning, and the values of some that ask for nothing (so may pass).
UNSUPPORTED = ("logit_bias", "parallel_tool_calls", "user", "store", "metadata", "functions", "function_call",
               "logprobs", "top_logprobs", "reasoning_effort", "modalities")
VENDOR_EXTRAS = frozenset({"top_k"})   # the one extra Gemini takes (as topK)
GENERATION_FIELDS = (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                     ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))
TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "MODEL_ARMOR"})
FILTERED_PREFIX = "IMAGE_"    # IMAGE_SAFETY, IMAGE_PROHIBITED_CONTENT, IMAGE_RECITATION, …

# Google RPC error statuses and ErrorInfo reasons → failures.py kinds.
AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})
RPC_KINDS = {"UNAUTHENTICATED": AUTH, "PERMISSION_DENIED": AUTH, "RESOURCE_EXHAUSTED": RATE_LIMITED,
             "UNAVAILABLE": OVERLOADED, "DEADLINE_EXCEEDED": TIMEOUT, "INTERNAL": SERVER, "UNKNOWN": SERVER,
             "CANCELLED": SERVER, "ABORTED": SERVER, "DATA_LOSS": SERVER}
# How Gemini words a prompt longer than the model's window (400 INVALID_ARGUMENT).
CONTEXT_SIGNALS = ("input token count", "exceeds the maximum number of tokens", "input context is too long",
                   "exceeds the context window")

SIGNATURE_MARK = "__ts_"


class GeminiAdapter(HTTPProvider):
    label = "Gemini"
    default_base = DEFAULT_BASE
    endpoints = ("chat/completions", "embeddings")

    def __init__(self, deployments, *, pool_maxsize: int, redactor):
        # the `models/<name>` each deployment's embedding requests name, made once
        self._models = {d.id: model_path(d.upstream_model) for d in deployments}
        super().__init__(deployments, pool_maxsize=pool_maxsize, redactor=redactor)

    def url(self, deployment: Deployment, base: str, endpoint: str, stream: bool) -> str:
        model = f"{base}/{quote(model_path(deployment.upstream_model), safe='/')}"
        if endpoint == "embeddings":
            return f"{model}:batchEmbedContents"
        return f"{model}:streamGenerateContent?alt=sse" if stream else f"{model}:generateContent"

    def auth(self, deployment: Deployment):
        return HeaderAuth("x-goog-api-key", deployment.api_key) if deployment.api_key else None

    def request_body(self, deployment: Deployment, request: ModelRequest, stream: bool) -> dict:
        if request.endpoint == "embeddings":
            self.refuse_unsupported(deployment, request, ("user", *request.extra))
            return embedding_body(self._models[deployment.id], request.params)
        params = request.params
        names = list(UNSUPPORTED)   # refuse_unsupported skips the absent ones and values that ask for nothing
        names += [name for name in request.extra if name not in VENDOR_EXTRAS]
        if stream:
            names.append("n")
        dropped = self.refuse_unsupported(deployment, request, names)
        return chat_body(params, request.extra, dropped)

    def completion(self, deployment: Deployment, request: ModelRequest, body: dict) -> Completion:
        if request.endpoint == "embeddings":
            return embedding_list(request, body)
        answer = chat_answer(request.model, body)
        usage = answer["usage"]
        if usage is None:   # Gemini sent no usageMetadata: estimate, for the client and the books alike
            answer["usage"] = usage = usage_dict(estimate_prompt_tokens(request.endpoint, request.params),
                                                 estimate_completion_tokens(answer))
        return Completion(answer, Usage.from_openai(usage))

    def translator(self, deployment: Deployment, request: ModelRequest, out: ChunkWriter) -> "StreamTranslator":
        return StreamTranslator(out)

    def describe_error(self, status: int, content: bytes, headers) -> UpstreamError:
        return google_error(error_fields(content), status)

    def in_band_error(self, body: dict) -> UpstreamError | None:
        error = body.get("error")
        return google_error(error, None) if isinstance(error, dict) and "candidates" not in body else None

    def stream_decoder(self) -> "GeminiStreamDecoder":
        return GeminiStreamDecoder(MAX_EVENT)


def model_path(upstream_model: str) -> str:
    """`gemini-2.0-flash` → `models/gemini-2.0-flash`; a full resource name (`tunedModels/x`) stays as it is."""
    return upstream_model if "/" in upstream_model else f"models/{upstream_model}"


# --- OpenAI request → generateContent ---------------------------------------------------------

def chat_body(params, extra, dropped: set[str]) -> dict:
    system, contents = translate_messages(params["messages"])
    body: dict = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if params.get("tools"):
        body["tools"] = [{"functionDeclarations": [declaration(tool, i) for i, tool in enumerate(params["tools"])]}]
        if params.get("tool_choice") is not None:
            body["toolConfig"] = {"functionCallingConfig": calling_config(params["tool_choice"])}
    config = generation_config(params, extra, dropped)
    if config:
        body["generationConfig"] = config
    return body


def generation_config(params, extra, dropped: set[str]) -> dict:
    config = {gemini: params[name] for name, gemini in GENERATION_FIELDS if params.get(name) is not None}
    limit = params.get("max_completion_tokens") or params.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    top_k = extra.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidRequest("Invalid value for 'top_k': must be a positive integer.", param="top_k")
        config["topK"] = top_k
    stop = params.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("n") not in (None, 1) and "n" not in dropped:
        config["candidateCount"] = params["n"]
    response_format = params.get("response_format") or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if response_format["type"] == "json_schema" and schema is not None:
            config["responseJsonSchema"] = schema
    return config


def declaration(tool: dict, index: int) -> dict:
    if tool.get("type") != "function":
        raise InvalidRequest(f"Invalid value for 'tools[{index}].type': Gemini takes function tools only.",
                             param=f"tools[{index}].type")
    function = tool["function"]
    declared = {"name": function["name"]}
    if function.get("description"):
        declared["description"] = function["description"]
    if function.get("parameters") is not None:
        # the JSON-Schema field: the older `parameters` takes only an OpenAPI subset
        declared["parametersJsonSchema"] = function["parameters"]
    return declared


def calling_config(choice) -> dict:
    if isinstance(choice, str):
        return {"mode": TOOL_MODES[choice]}
    if choice.get("type") == "function":
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    raise InvalidRequest("Invalid value for 'tool_choice': Gemini takes none, auto, required or one function.",
                         param="tool_choice")


def translate_messages(messages) -> tuple[list, list]:
    """OpenAI messages → (systemInstruction parts, contents); neighbours of one role share a content."""
    system: list = []
    contents: list = []
    names: dict = {}    # tool_call id → function name, for the tool messages that answer them
    for i, message in enumerate(messages):
        role, path = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            text = text_of(message.get("content"))
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            author, parts = "user", user_parts(message["content"], path)
        elif role == "assistant":
            author, parts = "model", model_parts(message, path, names)
        elif role == "tool":
            author, parts = "user", [function_response(message, path, names)]
        else:
            raise InvalidRequest(f"Invalid value for '{path}.role': legacy function messages are not supported "
                                 f"by Gemini; use tools and tool messages.", param=f"{path}.role")
        if parts:
            add_turn(contents, author, parts, "parts")
    return system, contents


def user_parts(content, path: str) -> list:
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for j, part in enumerate(content):
        kind, where = part.get("type"), f"{path}.content[{j}]"
        if kind == "text":
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(image_part(part["image_url"]["url"], f"{where}.image_url.url"))
        elif kind == "input_audio":
            audio = part["input_audio"]
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}",
                                         "data": audio.get("data", "")}})
        else:
            raise InvalidRequest(f"Invalid value for '{where}.type': content parts of type {kind!r} are not "
                                 f"supported by Gemini.", param=f"{where}.type")
    return parts


def image_part(url: str, path: str) -> dict:
    if url.startswith("gs://") or url.startswith(FILES_API_PREFIX):
        media_type = mimetypes.guess_type(url)[0]
        return {"fileData": {"mimeType": media_type, "fileUri": url} if media_type else {"fileUri": url}}
    source = image_source(url, path) if url.startswith("data:") else None
    if source is None:
        raise InvalidRequest(f"Invalid value for '{path}': Gemini does not fetch image URLs; send the image as a "
                             f"base64 data: URL, or as a gs:// or Files API URI.", param=path)
    return {"inlineData": {"mimeType": source[0], "data": source[1]}}


def model_parts(message: dict, path: str, names: dict) -> list:
    text = text_of(message.get("content"))
    parts: list = [{"text": text}] if text else []
    for k, call in enumerate(message.get("tool_calls") or ()):
        where = f"{path}.tool_calls[{k}].function"
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"Invalid value for '{where}': a function tool call must name its function.",
                                 param=where)
        names[call["id"]] = function["name"]
        part = {"functionCall": {"name": function["name"],
                                 "args": tool_arguments(function.get("arguments"), f"{where}.arguments")}}
        signature = signature_of(call["id"])
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def function_response(message: dict, path: str, names: dict) -> dict:
    name = names.get(message["tool_call_id"])
    if name is None:
        raise InvalidRequest(f"Invalid value for '{path}.tool_call_id': it answers no tool call of an earlier "
                             f"assistant message (Gemini needs the function's name).", param=f"{path}.tool_call_id")
    text = text_of(message.get("content"))
    try:
        result = orjson.loads(text)
    except orjson.JSONDecodeError:
        result = None
    return {"functionResponse": {"name": name, "response": result if isinstance(result, dict) else {"result": text}}}


def new_call_id(given, signature) -> str:
    """The OpenAI id of a function call: Gemini's own id or a fresh one, carrying the thought signature if any."""
    call_id = given if isinstance(given, str) and given else "call_" + secrets.token_hex(12)
    if isinstance(signature, str) and signature:
        call_id += SIGNATURE_MARK + signature.replace("+", "-").replace("/", "_").rstrip("=")
    return call_id


def signature_of(call_id: str) -> str | None:
    """The thought signature `new_call_id` put into an id, in Gemini's own (standard base64) spelling."""
    _, mark, packed = call_id.partition(SIGNATURE_MARK)
    if not mark or not packed:
        return None
    return packed.replace("-", "+").replace("_", "/") + "=" * (-len(packed) % 4)


# --- generateContent answers → OpenAI -------------------------------------------------------------

def finish_reason(reason, called: bool) -> str:
    if reason in FILTERED or (isinstance(reason, str) and reason.startswith(FILTERED_PREFIX)):
        return "content_filter"
    mapped = FINISH_REASONS.get(reason, "stop")   # OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, unknown: stop
    return "tool_calls" if mapped == "stop" and reason == "STOP" and called else mapped


def usage_of(metadata) -> dict | None:
    if not isinstance(metadata, dict):
        return None
    thoughts = metadata.get("thoughtsTokenCount")
    cached = metadata.get("cachedContentTokenCount")
    return usage_dict(metadata.get("promptTokenCount") or 0, (metadata.get("candidatesTokenCount") or 0)
                      + (thoughts or 0), cached=cached, reasoning=thoughts)


def call_of(function_call: dict, signature) -> dict:
    return tool_call(new_call_id(function_call.get("id"), signature), function_call["name"],
                     orjson.dumps(function_call.get("args") or {}).decode())


def candidate_message(candidate: dict) -> tuple[dict, str]:
    texts, calls = [], []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if part.get("thought"):
            continue
        if "text" in part:
            texts.append(part["text"])
        elif "functionCall" in part:
            calls.append(call_of(part["functionCall"], part.get("thoughtSignature")))
    text = "".join(texts)
    message = {"content": text if text or not calls else None, "tool_calls": calls}
    return message, finish_reason(candidate.get("finishReason"), bool(calls))


def chat_answer(model: str, body: dict) -> dict:
    """A whole `chat.completion` from a generateContent answer (usage None when Gemini sent none)."""
    usage = usage_of(body.get("usageMetadata"))
    candidates = sorted(body.get("candidates") or (), key=lambda c: c.get("index") or 0)
    if not candidates:
        if "promptFeedback" not in body:
            raise BadUpstreamResponse("Gemini answered with neither candidates nor prompt feedback")
        # the prompt itself was blocked: an empty answer, filtered
        return chat_completion(model, {"content": ""}, "content_filter", usage, id=body.get("responseId"))
    answers = [candidate_message(candidate) for candidate in candidates]
    answer = chat_completion(model, *answers[0], usage, id=body.get("responseId"))
    if len(answers) > 1:
        answer["choices"] = [{**chat_completion(model, *a, usage)["choices"][0], "index": i}
                             for i, a in enumerate(answers)]
    return answer


class StreamTranslator:
    """streamGenerateContent events → OpenAI chunks.

    Text parts go out as they come; a function call arrives whole and goes out as
    one tool-call delta. Gemini may mark several events with a finishReason and has
    no terminator, so the finish and usage chunks wait for the body's end (`end`).
    """
    __slots__ = ("out", "done", "_started", "_reason", "_calls", "_usage", "_blocked")

    def __init__(self, out: ChunkWriter):
        self.out = out
        self.done = False
        self._started = False
        self._reason = None
        self._calls = 0
        self._usage = None
        self._blocked = False

    def feed(self, event) -> list:
        body = orjson.loads(event[1])
        if "error" in body:
            raise StreamFailure(google_error(body["error"], None))
        chunks = []
        if not self._started:
            self._started = True
            if isinstance(body.get("responseId"), str):
                self.out.id = body["responseId"]
            chunks.append(self.out.role())
        if body.get("usageMetadata"):
            self._usage = body["usageMetadata"]
        if (body.get("promptFeedback") or {}).get("blockReason"):
            self._blocked = True
        for candidate in body.get("candidates") or ():
            if candidate.get("index", 0) != 0:
                continue
            for part in (candidate.get("content") or {}).get("parts") or ():
                if part.get("thought"):
                    continue
                if part.get("text"):
                    chunks.append(self.out.text(part["text"]))
                elif "functionCall" in part:
                    call = call_of(part["functionCall"], part.get("thoughtSignature"))
                    chunks.append(self.out.tool_call(self._calls, id=call["id"], name=call["function"]["name"],
                                                     arguments=call["function"]["arguments"]))
                    self._calls += 1
            if candidate.get("finishReason"):
                self._reason = candidate["finishReason"]
        return chunks

    def end(self) -> list:
        if self._reason is None and not self._blocked:
            return []    # no candidate finished and nothing was blocked: a cut stream (the adapter says so)
        self.done = True
        chunks = [] if self._started else [self.out.role()]
        reason = "content_filter" if self._blocked else finish_reason(self._reason, self._calls > 0)
        chunks.append(self.out.finish(reason))
        usage = usage_of(self._usage)
        if usage is not None:
            chunks.append(self.out.usage(usage))
        return chunks


class GeminiStreamDecoder(SSEDecoder):
    """SSE `data:` events, and the raw JSON error objects Google writes into the same body mid-stream.

    A line opening with `{` between events starts a raw object; its lines are
    gathered until they parse as JSON, then handed on as one event (like a
    `data:` event's payload). Whatever is still gathered when the body ends goes
    on too, for the translator to reject.
    """
    __slots__ = ("_raw", "_raw_size")

    def __init__(self, max_event_bytes: int = MAX_EVENT):
        super().__init__(max_event_bytes)
        self._raw: list[bytes] = []
        self._raw_size = 0

    def _line(self, line: bytes, events: list) -> None:
        if not self._raw and not (line.startswith(b"{") and not self._data):
            super()._line(line, events)
            return
        self._raw.append(line)
        self._raw_size += len(line) + 1
        if self._raw_size > self._max:
            raise EventTooLarge(f"an event of the stream is larger than {self._max >> 20} MB")
        if line.rstrip().endswith(b"}"):
            payload = b"\n".join(self._raw)
            try:
                orjson.loads(payload)
            except orjson.JSONDecodeError:
                return
            self._raw, self._raw_size = [], 0
            events.append((None, payload))

    def flush(self) -> list:
        events = super().flush()
        if self._raw:
            events.append((None, b"\n".join(self._raw)))
            self._raw, self._raw_size = [], 0
        return events


# --- errors ---------------------------------------------------------------------------------------

def google_error(error: dict, status: int | None) -> UpstreamError:
    """A Google RPC error object (`{code, message, status, details}`) as failures.py reads it."""
    code = error.get("code")
    if status is None:
        status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502
    rpc = error.get("status") if isinstance(error.get("status"), str) else None
    message = str(error.get("message") or "")
    reasons = {d.get("reason") for d in error.get("details") or () if isinstance(d, dict)}
    kind = RPC_KINDS.get(rpc)
    if reasons & AUTH_REASONS:
        kind = AUTH
    elif kind is None and status == 400 and has_signal(message, CONTEXT_SIGNALS):
        kind = CONTEXT_LENGTH
    elif kind is None and status == 499:
        kind = SERVER
    return UpstreamError(status, message, kind=kind, code=rpc.lower() if rpc else None,
                         retry_after=retry_delay(error.get("details")))


def retry_delay(details) -> float | None:
    """Seconds from a `google.rpc.RetryInfo` detail (`"retryDelay": "27s"`): Google's 429s carry it in the body."""
    for detail in details or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            try:
                return min(max(0.0, float(str(delay).removesuffix("s"))), RETRY_AFTER_MAX)
            except ValueError:
                return None
    return None


# --- embeddings -----------------------------------------------------------------------------------

def embedding_body(model: str, params) -> dict:
    texts = params["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not all(isinstance(text, str) for text in texts):
        raise InvalidRequest("Invalid value for 'input': Gemini embeds text only, not token ids.", param="input")
    extra = {"outputDimensionality": params["dimensions"]} if params.get("dimensions") else {}
    return {"requests": [{"model": model, "content": {"parts": [{"text": text}]}, **extra} for text in texts]}


def embedding_list(request: ModelRequest, body: dict) -> Completion:
    inputs = request.params["input"]
    vectors = [item["values"] for item in body["embeddings"]]
    if len(vectors) != (1 if isinstance(inputs, str) else len(inputs)):
        raise BadUpstreamResponse("Gemini answered a different number of embeddings than inputs")
    packed = request.params.get("encoding_format") == "base64"
    try:
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if packed else v}
                for i, v in enumerate(vectors)]
    except struct.error:
        raise BadUpstreamResponse("Gemini answered an embedding that is not a list of numbers") from None
    prompt = estimate_prompt_tokens("embeddings", request.params)   # batchEmbedContents reports no usage
    return Completion({"object": "list", "data": data, "model": request.model,
                       "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}, Usage(prompt, 0, prompt))
