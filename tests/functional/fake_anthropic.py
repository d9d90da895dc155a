"""A fake Anthropic Messages API on 127.0.0.1 for functional tests.

It speaks Anthropic's real wire format: `POST /v1/messages`, JSON answers and
error bodies (`{"type":"error","error":{…},"request_id":…}`), and SSE streams
with `event:` lines (message_start, content_block_*, ping, message_delta,
message_stop), replaying the recorded fixtures of tests/reference where a
scenario names one. It refuses (401 authentication_error) a call without the
right `x-api-key`, and (400) one without `anthropic-version: 2023-06-01`, and
records every request it received.

The upstream model name picks the behaviour:
  status-<code>[-context]   answer that HTTP status with Anthropic's error body for it
                            (`-context`: 400 "prompt is too long: … tokens > … maximum")
  fixture-<name>            stream tests/reference/fixtures/anthropic/messages-stream-<name>.sse
  stream-error              stream some text, then an `event: error` overloaded_error
  anything else             tools given and no tool result yet: call the first tool with TOOL_INPUT
                            (every tool when the last user text says "parallel"), after a short
                            text; otherwise answer "echo: <last user text, or the tool results>"
Streams send text in 3-character deltas and tool input in 5-character pieces, and every
stream goes out in 37-byte network pieces.
"""
from __future__ import annotations

import json
import socket
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from .loopback import LoopbackServer

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "anthropic"
API_VERSION = "2023-06-01"
TOOL_INPUT = {"city": "Paris"}        # what provider_clients.check_round_trip expects
USAGE = {"input_tokens": 21, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 5, "output_tokens": 9}

ERRORS = {   # status → (Anthropic error type, message)
    400: ("invalid_request_error", "messages.0.content: field required"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: claude-nonexistent"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


class FakeAnthropic(LoopbackServer):
    def __init__(self, api_key: str):
        super().__init__(_Handler)
        self.api_key = api_key

    def last_request(self, marker: str | None = None) -> dict:
        """The last request received (carrying `marker` in its raw body, when given)."""
        with self.lock:
            matching = [r for r in self.requests if marker is None or marker.encode() in r["raw"]]
        assert matching, f"the fake Anthropic received no request carrying {marker!r}"
        return matching[-1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeAnthropic

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self.fake.lock:
            self.fake.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body,
                                       "raw": raw})
        if self.path != "/v1/messages":
            return self._error(404, "not_found_error", f"Not found: {self.path}")
        if self.headers.get("x-api-key") != self.fake.api_key:
            return self._error(401, *ERRORS[401])
        if self.headers.get("anthropic-version") != API_VERSION:
            return self._error(400, "invalid_request_error", "anthropic-version: header is required")
        if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
            return self._error(400, "invalid_request_error", "max_tokens: Field required")
        model = str(body.get("model"))
        if model.startswith("status-"):
            return self._status(model)
        if model.startswith("fixture-"):
            return self._stream_raw((FIXTURES / f"messages-stream-{model[8:]}.sse").read_bytes())
        blocks, stop_reason = _answer(body)
        if model == "stream-error":
            events = _events(model, [{"type": "text", "text": "partial answer"}], "end_turn")[:4]
            events.append(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            return self._stream_raw(b"".join(_sse(name, data) for name, data in events))
        if model == "ping-forever":
            return self._ping_forever(_events(model, [{"type": "text", "text": "thinking it over"}], "end_turn")[:4])
        if body.get("stream"):
            return self._stream_raw(b"".join(_sse(name, data) for name, data in _events(model, blocks, stop_reason)))
        self._json(200, {"model": model + "-20250929", "id": "msg_01FakeAnthropicAnswer", "type": "message",
                         "role": "assistant", "content": blocks, "stop_reason": stop_reason,
                         "stop_sequence": None, "usage": {**USAGE, "service_tier": "standard"}})

    def _status(self, model: str):
        parts = model.split("-")
        status = int(parts[1])
        type_, message = ERRORS[status]
        if parts[2:] == ["context"]:
            message = "prompt is too long: 208310 tokens > 200000 maximum"
        headers = {"retry-after": "1"} if status in (429, 529) else {}
        self._error(status, type_, message, headers)

    def _error(self, status: int, type_: str, message: str, headers: dict | None = None):
        self._json(status, {"type": "error", "error": {"type": type_, "message": message},
                            "request_id": "req_011FakeAnthropic"}, {"x-should-retry": "false", **(headers or {})})

    def _json(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_011FakeAnthropic")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _ping_forever(self, head: list, seconds: float = 6.0, every: float = 0.2):
        """Content, then nothing but Anthropic's `ping` keep-alives: an upstream that is stuck but alive."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [_sse(name, data) for name, data in head]
        deadline = time.monotonic() + seconds
        try:
            while True:
                for event in events:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                if time.monotonic() > deadline:
                    break
                events = [_sse("ping", {"type": "ping"})]
                time.sleep(every)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass   # the gateway gave up on the stream, as it should

    def _stream_raw(self, data: bytes):
        """An SSE body in chunked coding, cut into small pieces as a real network would."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(data), 37):
            piece = data[start:start + 37]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# --- answers ----------------------------------------------------------------------------------

def _last_user_turn(body: dict):
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return message.get("content")
    return ""


def _answer(body: dict) -> tuple[list, str]:
    """The content blocks and stop reason of the fake's answer to `body`."""
    content = _last_user_turn(body)
    blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
    results = [b for b in blocks if b.get("type") == "tool_result"]
    text = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    tools = body.get("tools") or []
    if tools and not results and (body.get("tool_choice") or {}).get("type") != "none":
        called = tools if "parallel" in text else tools[:1]
        return [{"type": "text", "text": "Let me look that up."}] + [
            {"type": "tool_use", "id": f"toolu_01Fake{i}", "name": tool["name"], "input": TOOL_INPUT,
             "caller": {"type": "direct"}} for i, tool in enumerate(called)], "tool_use"
    said = " | ".join(str(r.get("content")) for r in results) if results else text
    return [{"type": "text", "text": f"echo: {said}"}], "end_turn"


def _events(model: str, blocks: list, stop_reason: str) -> list[tuple[str, dict]]:
    """The answer as Anthropic streams it: text in 3-character deltas, tool input in 5-byte pieces."""
    start_usage = {**USAGE, "output_tokens": 1, "service_tier": "standard"}
    events = [("message_start", {"type": "message_start", "message": {
        "id": "msg_01FakeAnthropicStream", "type": "message", "role": "assistant", "model": model + "-20250929",
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}})]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}}))
            if index == 0:
                events.append(("ping", {"type": "ping"}))
            pieces = [block["text"][i:i + 3] for i in range(0, len(block["text"]), 3)]
            deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
            arguments = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                {"type": "input_json_delta", "partial_json": arguments[i:i + 5]} for i in range(0, len(arguments), 5)]
        events += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                   for delta in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason,
                                                                        "stop_sequence": None},
                                     "usage": {"output_tokens": USAGE["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
