"""The adapter for AWS Bedrock's Converse and ConverseStream APIs (`bedrock/<model id>`).

Two things here are easy to get subtly wrong by hand, so botocore does them:
the SigV4 signature (its canonical URI double-encodes a model id's `%3A`) and
the binary event stream of ConverseStream (frames with two CRCs). Everything
else is translation between the OpenAI chat shape and Converse's, with the
parameters Converse has no place for refused (or dropped with `drop_params`).
JSON mode (`json_object`) forces one tool whose input is the answer (chunks.JSON_TOOL).
"""
from __future__ import annotations

import logging
from urllib.parse import quote

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from requests.auth import AuthBase

from ..errors import BadUpstreamResponse, InvalidRequest
from ..types import Completion, Usage
from .auth import bearer
from .chunks import (JSON_TOOL, JSON_TOOL_DESCRIPTION, ChunkWriter, add_turn, chat_completion, image_source,
                     json_mode, text_of, tool_arguments, tool_call, usage_dict)
from .failures import (AUTH, CONTEXT_LENGTH, OVERLOADED, RATE_LIMITED, SERVER, TIMEOUT, StreamFailure,
                       UpstreamError, has_signal)
from .http import HTTPProvider

# OpenAI parameters Converse has no field for. A value that asks for nothing
# different from the default (logprobs false, a zero penalty) is not refused.
UNSUPPORTED = ("n", "logprobs", "top_logprobs", "logit_bias", "seed", "presence_penalty", "frequency_penalty",
               "user", "parallel_tool_calls", "audio", "modalities", "prediction", "store", "metadata",
               "service_tier", "functions", "function_call", "reasoning_effort")
JSON_TOOL_CONFIG = {"tools": [{"toolSpec": {"name": JSON_TOOL, "description": JSON_TOOL_DESCRIPTION,
                                             "inputSchema": {"json": {"type": "object"}}}}],
                    "toolChoice": {"tool": {"name": JSON_TOOL}}}
MODEL_FIELDS = ("top_k",)   # vendor extras that go to the model as additionalModelRequestFields

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                  "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}

# Bedrock's error names (header `x-amzn-ErrorType`, body `__type`, or a stream
# frame's `:exception-type`, compared lower-case) → (status, kind).
ERRORS = {
    "validationexception": (400, None),
    "accessdeniedexception": (403, AUTH),
    "unrecognizedclientexception": (403, AUTH),
    "invalidsignatureexception": (403, AUTH),
    "incompletesignatureexception": (403, AUTH),
    "missingauthenticationtokenexception": (403, AUTH),
    "expiredtokenexception": (403, AUTH),
    "resourcenotfoundexception": (404, None),
    "modeltimeoutexception": (408, TIMEOUT),
    "throttlingexception": (429, RATE_LIMITED),
    "modelnotreadyexception": (429, RATE_LIMITED),
    "modelerrorexception": (424, SERVER),
    "modelstreamerrorexception": (424, SERVER),
    "serviceunavailableexception": (503, OVERLOADED),
    "internalserverexception": (500, SERVER),
}
# How Bedrock's models word "the prompt is longer than the context window" in a ValidationException.
CONTEXT_WINDOW_SIGNALS = ("input is too long", "too many input tokens", "prompt is too long",
                          "exceeds the context window", "context length", "exceed context limit")

MAX_FRAME = 4 << 20   # bytes of one event-stream frame (botocore's own cap is 24 MiB of payload)


class BedrockAdapter(HTTPProvider):
    label = "Bedrock"
    stream_content_types = ("application/vnd.amazon.eventstream",)

    # --- per deployment, at start-up ---------------------------------------------------

    def base_url(self, deployment):
        return deployment.api_base or f"https://bedrock-runtime.{region_of(deployment)}.amazonaws.com"

    def url(self, deployment, base, endpoint, stream):
        """The model id is one path segment (`:` → %3A, `/` of an ARN → %2F)."""
        operation = "converse-stream" if stream else "converse"
        return f"{base}/model/{quote(deployment.upstream_model, safe='')}/{operation}"

    def headers(self, deployment):
        # One header set serves both operations, and ConverseStream answers
        # application/vnd.amazon.eventstream: accept anything, as AWS's SDKs do.
        return {"Accept": "*/*"}

    def auth(self, deployment):
        """SigV4 with the deployment's AWS keys; else its `api_key` as a Bedrock API key (Bearer).

        botocore's signer logs each canonical request and signature at DEBUG:
        its logger stays at WARNING whatever the gateway's own level is.
        """
        logging.getLogger("botocore").setLevel(logging.WARNING)
        aws = deployment.aws
        if aws.get("aws_access_key_id") and aws.get("aws_secret_access_key"):
            credentials = Credentials(aws["aws_access_key_id"], aws["aws_secret_access_key"],
                                      aws.get("aws_session_token"))
            return SigV4(credentials, region_of(deployment))
        return bearer(deployment.api_key)

    def stream_decoder(self):
        return EventStreamDecoder()

    # --- per request ---------------------------------------------------------------------

    def request_body(self, deployment, request, stream):
        """Refused parameters raise here; with drop_params they are simply never translated."""
        params, extra = request.params, request.extra
        self.refuse_unsupported(deployment, request, [name for name in (*UNSUPPORTED, *extra)
                                                      if name not in MODEL_FIELDS])
        body = converse_body(params, extra)
        if json_mode(params):
            if params.get("tools"):
                raise InvalidRequest("response_format 'json_object' cannot be combined with tools on Bedrock: "
                                     "use 'json_schema' instead.", param="response_format")
            body["toolConfig"] = JSON_TOOL_CONFIG
        return body

    def completion(self, deployment, request, body):
        """A Converse answer (a shape error is the base's BadUpstreamResponse)."""
        content = body["output"]["message"]["content"]
        if not isinstance(content, list):
            raise TypeError("content is not a list of blocks")
        texts, calls = [], []
        as_json = json_mode(request.params)
        for block in content:
            if "text" in block and not as_json:
                texts.append(block["text"])
            elif "toolUse" in block and as_json and block["toolUse"].get("name") == JSON_TOOL:
                texts.append(orjson.dumps(block["toolUse"].get("input", {})).decode())
            elif "toolUse" in block:
                use = block["toolUse"]
                calls.append(tool_call(use["toolUseId"], use["name"], orjson.dumps(use.get("input", {})).decode()))
        usage = openai_usage(body.get("usage"))
        reply = {"content": "".join(texts) if texts else None, "tool_calls": calls}
        stop = body.get("stopReason")
        answer = chat_completion(request.model, reply, "stop" if as_json and stop == "tool_use" else finish_reason(stop),
                                 usage)
        return Completion(answer, Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]))

    def translator(self, deployment, request, out):
        return ConverseStreamTranslator(out, json_mode(request.params))

    def describe_error(self, status, content, headers):
        name = (headers.get("x-amzn-ErrorType") or "").partition(":")[0]
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        body = body if isinstance(body, dict) else {}
        if not name and isinstance(body.get("__type"), str):
            name = body["__type"].rpartition("#")[2]
        message = body.get("message") or body.get("Message")
        return describe(name, status, message if isinstance(message, str) else "")


def region_of(deployment) -> str:
    region = deployment.aws.get("aws_region_name")
    if not region:
        raise ValueError(f"deployment {deployment.id}: Bedrock needs aws_region_name")
    return region


# --- signing -------------------------------------------------------------------------------

class SigV4(AuthBase):
    """Signs each request with botocore's SigV4 signer, for service `bedrock`.

    The signer sees the URL exactly as it is sent (so it double-encodes the
    canonical URI as AWS expects), the body, and only the headers a proxy has
    no reason to touch: Content-Type and the `X-Amz-*` ones it adds itself
    (Host it takes from the URL). The secret stays inside the signer.
    """

    def __init__(self, credentials: Credentials, region: str):
        self._signer = SigV4Auth(credentials, "bedrock", region)
        self.region = region

    def __call__(self, request):
        signed = {k: v for k, v in request.headers.items()
                  if k.lower() == "content-type" or k.lower().startswith("x-amz-")}
        aws = AWSRequest(method=request.method, url=request.url, data=request.body, headers=signed)
        self._signer.add_auth(aws)
        for name, value in aws.headers.items():
            if name.lower() != "content-type":
                request.headers[name] = value
        return request

    def __repr__(self) -> str:
        return f"SigV4({self.region!r}, '***')"


# --- OpenAI request → Converse -----------------------------------------------------------

def converse_body(params, extra) -> dict:
    system, messages = converse_messages(params["messages"])
    body: dict = {"messages": messages}
    if system:
        body["system"] = system
    inference = inference_config(params)
    if inference:
        body["inferenceConfig"] = inference
    tools = tool_config(params, any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"]))
    if tools:
        body["toolConfig"] = tools
    output = output_config(params.get("response_format"))
    if output:
        body["outputConfig"] = output
    fields = {name: extra[name] for name in MODEL_FIELDS if extra.get(name) is not None}
    if fields:
        body["additionalModelRequestFields"] = fields
    return body


def converse_messages(messages) -> tuple[list, list]:
    """System prompts hoisted; user and assistant turns as content blocks.

    Consecutive turns of one role are merged into one, as Converse wants them
    to alternate; so OpenAI's one `tool` message per call becomes the single
    user turn of toolResult blocks that follows the assistant's toolUse turn.
    """
    system, turns = [], []
    for i, message in enumerate(messages):
        role, path = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            text = text_of(message.get("content"))
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            blocks = user_blocks(message["content"], f"{path}.content")
        elif role == "assistant":
            blocks = assistant_blocks(message, path)
        elif role == "tool":
            role, blocks = "user", [tool_result(message)]
        else:
            raise InvalidRequest(f"messages with role '{role}' are not supported by Bedrock (use tools).",
                                 param=f"{path}.role", code="unsupported_value")
        if blocks:
            add_turn(turns, role, blocks, "content")
    return system, turns


def user_blocks(content, path: str) -> list:
    if isinstance(content, str):
        return [{"text": content}]
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "input_text"):
            blocks.append({"text": part["text"]})
        elif kind == "image_url":
            blocks.append(image_block(part["image_url"]["url"], f"{path}[{j}].image_url.url"))
        else:
            raise InvalidRequest(f"content parts of type '{kind}' are not supported by Bedrock.",
                                 param=f"{path}[{j}].type", code="unsupported_value")
    return blocks


def image_block(url: str, path: str) -> dict:
    """A `data:` URL as image bytes (base64, as Converse's JSON carries blobs); Bedrock fetches no URLs."""
    source = image_source(url, path)
    if source is None:
        raise InvalidRequest("image URLs are not supported by Bedrock: send the image as a "
                             "'data:image/<type>;base64,…' URL.", param=path, code="unsupported_value")
    media_type, data = source
    if media_type not in IMAGE_FORMATS:
        raise InvalidRequest(f"images of type '{media_type}' are not supported by Bedrock "
                             "(png, jpeg, gif, webp).", param=path, code="unsupported_value")
    return {"image": {"format": IMAGE_FORMATS[media_type], "source": {"bytes": data}}}


def assistant_blocks(message, path: str) -> list:
    blocks = []
    text = text_of(message.get("content"))
    if text:
        blocks.append({"text": text})
    for k, call in enumerate(message.get("tool_calls") or ()):
        where = f"{path}.tool_calls[{k}]"
        function = call.get("function")
        if call.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest("only function tool calls are supported by Bedrock.", param=f"{where}.type",
                                 code="unsupported_value")
        blocks.append({"toolUse": {"toolUseId": call["id"], "name": function["name"],
                                   "input": tool_arguments(function["arguments"], f"{where}.function.arguments")}})
    if message.get("function_call"):
        raise InvalidRequest("function_call is not supported by Bedrock (use tool_calls).",
                             param=f"{path}.function_call", code="unsupported_parameter")
    return blocks


def tool_result(message) -> dict:
    """One tool message as a toolResult block. Its text goes as text: `status` is left out (only
    some models take it, and OpenAI has no error flag to fill it from)."""
    return {"toolResult": {"toolUseId": message["tool_call_id"],
                           "content": [{"text": text_of(message.get("content"))}]}}


def inference_config(params) -> dict:
    config = {}
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    if params.get("temperature") is not None:
        config["temperature"] = params["temperature"]
    if params.get("top_p") is not None:
        config["topP"] = params["top_p"]
    stop = params.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    return config


def tool_config(params, history_has_tools: bool) -> dict | None:
    """`tools` and `tool_choice` as toolConfig.

    Converse has no "none" choice. Without tool blocks in the history the
    tools are left out, which is what "none" means; with them, Bedrock refuses
    a request without toolConfig (ValidationException), so the tools stay and
    the model is merely not forced: it may still call one.
    """
    tools = params.get("tools")
    if not tools:
        return None
    choice = params.get("tool_choice")
    if choice == "none" and not history_has_tools:
        return None
    specs = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise InvalidRequest("only function tools are supported by Bedrock.", param=f"tools[{i}].type",
                                 code="unsupported_value")
        function = tool["function"]
        spec = {"name": function["name"],
                "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}}}
        if function.get("description"):
            spec["description"] = function["description"]
        if function.get("strict") is not None:
            spec["strict"] = function["strict"]
        specs.append({"toolSpec": spec})
    config: dict = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        if choice.get("type") != "function":
            raise InvalidRequest(f"tool_choice of type '{choice.get('type')}' is not supported by Bedrock.",
                                 param="tool_choice", code="unsupported_value")
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    return config


def output_config(response_format) -> dict | None:
    """A json_schema response_format as outputConfig.textFormat; Converse takes the schema as a JSON string."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    spec = response_format["json_schema"]
    schema = {"schema": orjson.dumps(spec.get("schema") or {}).decode(), "name": spec["name"]}
    if spec.get("description"):
        schema["description"] = spec["description"]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}}


# --- Converse → OpenAI -------------------------------------------------------------------

def finish_reason(stop_reason) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")


def openai_usage(usage) -> dict:
    """Converse's inputTokens leaves out cache reads and writes; OpenAI's prompt_tokens counts them."""
    usage = usage if isinstance(usage, dict) else {}
    counts = {k: v if type(v) is int and v >= 0 else 0 for k, v in usage.items()}
    cached = counts.get("cacheReadInputTokens", 0)
    prompt = counts.get("inputTokens", 0) + cached + counts.get("cacheWriteInputTokens", 0)
    return usage_dict(prompt, counts.get("outputTokens", 0),
                      cached=cached if "cacheReadInputTokens" in usage else None)


def describe(name: str, status: int, message: str) -> UpstreamError:
    """An error named by Bedrock (in a header, a body or a stream frame), in the gateway's terms."""
    known, kind = ERRORS.get(name.lower(), (status, None))
    if known == 400 and has_signal(message, CONTEXT_WINDOW_SIGNALS):
        kind = CONTEXT_LENGTH
    return UpstreamError(status=status or known, message=message, kind=kind)


# --- ConverseStream ----------------------------------------------------------------------

class EventStreamDecoder:
    """Frames of the AWS event stream → (headers, payload), parsed by botocore's EventStreamBuffer.

    A frame larger than MAX_FRAME, or one botocore cannot parse (bad CRC,
    bad lengths), is an answer no client can use: BadUpstreamResponse.
    """
    __slots__ = ("_buffer", "_pending")

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self._pending = 0   # bytes fed and not yet part of a whole frame

    def feed(self, data: bytes) -> list:
        self._buffer.add_data(data)
        self._pending += len(data)
        events = []
        try:
            for message in self._buffer:
                self._pending -= message.prelude.total_length
                events.append((message.headers, message.payload))
        except Exception as exc:   # botocore's ParserError, or struct.error on a nonsensical prelude
            raise BadUpstreamResponse(f"the upstream sent an event stream frame that cannot be read "
                                      f"({type(exc).__name__})") from None
        if self._pending > MAX_FRAME:
            raise BadUpstreamResponse(f"the upstream sent an event stream frame over {MAX_FRAME >> 20} MB")
        return events

    def flush(self) -> list:
        return []   # a partial frame at the end is no event; the translator knows the stream is cut


class ConverseStreamTranslator:
    """ConverseStream events → OpenAI chunks.

    Tool calls get their own index counter from 0 (Converse counts text blocks
    too); reasoning text is dropped. `metadata` (usage) is the last event; a
    stream cut after `messageStop` still counts as whole (the usage is estimated).
    """
    __slots__ = ("out", "done", "_tools", "_stopped", "_json_mode", "_json_block")

    def __init__(self, out: ChunkWriter, json_mode: bool = False):
        self.out = out
        self.done = False
        self._tools: dict = {}     # contentBlockIndex → OpenAI tool_calls index
        self._stopped = False
        self._json_mode = json_mode
        self._json_block = None    # the block of the JSON_TOOL call, whose input is the answer's text

    def feed(self, event):
        headers, payload = event
        kind = headers.get(":message-type")
        if kind == "exception":
            raise StreamFailure(stream_error(headers.get(":exception-type") or "", payload))
        if kind == "error":   # the generic form: name and message in headers
            raise StreamFailure(frame_error(headers.get(":error-code") or "", headers.get(":error-message") or ""))
        if kind != "event":
            return ()
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BadUpstreamResponse("the upstream sent a stream event that is not JSON") from None
        handler = _HANDLERS.get(headers.get(":event-type"))
        return handler(self, data) if handler and isinstance(data, dict) else ()

    def end(self):
        self.done = self.done or self._stopped
        return ()

    def _message_start(self, data):
        return (self.out.role(),)

    def _block_start(self, data):
        use = (data.get("start") or {}).get("toolUse")
        if not use:
            return ()
        if self._json_mode and use.get("name") == JSON_TOOL:
            self._json_block = data.get("contentBlockIndex")
            return ()
        index = self._tools[data.get("contentBlockIndex")] = len(self._tools)
        return (self.out.tool_call(index, id=use["toolUseId"], name=use["name"]),)

    def _block_delta(self, data):
        delta = data.get("delta") or {}
        if delta.get("text"):   # in JSON mode only the tool's input is the answer
            return (self.out.text(delta["text"]),) if not self._json_mode else ()
        use = delta.get("toolUse")
        if use and use.get("input") and self._json_block is not None \
                and data.get("contentBlockIndex") == self._json_block:
            return (self.out.text(use["input"]),)
        if use and use.get("input"):
            index = self._tools.get(data.get("contentBlockIndex"))
            if index is None:
                raise BadUpstreamResponse("the upstream sent tool input for a tool call it never started")
            return (self.out.tool_call(index, arguments=use["input"]),)
        return ()   # reasoningContent, empty deltas

    def _message_stop(self, data):
        self._stopped = True
        stop = data.get("stopReason")
        return (self.out.finish("stop" if self._json_block is not None and stop == "tool_use"
                                else finish_reason(stop)),)

    def _metadata(self, data):
        self.done = True
        return (self.out.usage(openai_usage(data.get("usage"))),)


_HANDLERS = {"messageStart": ConverseStreamTranslator._message_start,
             "contentBlockStart": ConverseStreamTranslator._block_start,
             "contentBlockDelta": ConverseStreamTranslator._block_delta,
             "messageStop": ConverseStreamTranslator._message_stop,
             "metadata": ConverseStreamTranslator._metadata}


def stream_error(name: str, payload: bytes) -> UpstreamError:
    """An exception frame (`:exception-type`), whose payload is {"message": …}."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return frame_error(name, message if isinstance(message, str) else "")


def frame_error(name: str, message: str) -> UpstreamError:
    """The HTTP status is 200 by the time a frame fails: the error's name gives the status; unknown → 502."""
    error = describe(name, 0, message)
    return error if error.status else UpstreamError(status=502, message=message, kind=SERVER)
