"""A fake OpenAI-compatible upstream on 127.0.0.1 for functional tests.

It speaks the real wire format (JSON bodies as OpenAI sends them, SSE streams
replayed from the recorded fixtures in tests/reference) and records what it
received, how many TCP connections it accepted and when a client hung up, so
tests can assert at the upstream's side of the gateway.

The upstream model name picks the behaviour (see `_SCENARIOS` and `_handle_chat`):
  status-<code>[-<kind>]   answer that HTTP status with an OpenAI error body (kind `context`:
                           context_length_exceeded; kind `policy`: content_policy_violation)
  hang-<seconds>           wait, then answer (to trip the gateway's timeout)
  garbage                  200 with a body that is not JSON
  fixture-<name>           replay tests/reference/fixtures/openai/chat-stream-<name>.sse
  slow-<chunks>-<ms>       stream <chunks> content chunks, <ms> apart
  stream-error-<n>         stream n chunks, then an in-band error event
  stream-cut-<n>           stream n chunks, then drop the connection
  stream-stall-<n>         stream n chunks, then go silent for 5 s before the rest
  anything else            an answer that echoes the last user message

Knobs, for tests that put several fake upstreams behind one gateway (the router's):
  delay                    seconds to wait before answering a chat/completions call (before
                           the status line, so for a stream it is the time to the first byte)
  misbehave(name, times)   answer the next `times` calls (None: every call until `heal()`) as
                           if their upstream model were `name` (one of the scenarios above)
  retry_after              the Retry-After header of status answers (default: "1" on 429 only)
  active_streams           streams being written right now; `peak_streams` the most at once
  count()                  requests received, all models (count(model): that model's)
"""
from __future__ import annotations

import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "reference"   # tests/reference, vendored
FIXTURES = REFERENCE / "fixtures" / "openai"


class FakeUpstream:
    def __init__(self, api_key: str = "upstream-secret-key-123"):
        self.api_key = api_key
        self.requests: list[dict] = []
        self.connections = 0
        self.hangups: list[float] = []          # when a streaming client went away (monotonic)
        self.delay = 0.0
        self.retry_after: str | None = None
        self.active_streams = 0
        self.peak_streams = 0
        self._behaviour: str | None = None
        self._behaviour_left: int | None = None
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FakeUpstream":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.hangups.clear()

    def last_request(self, model: str | None = None) -> dict:
        with self.lock:
            matching = [r for r in self.requests if model is None or (r["body"] or {}).get("model") == model]
        assert matching, f"the upstream received no request for {model!r}"
        return matching[-1]

    def count(self, model: str | None = None) -> int:
        with self.lock:
            if model is None:
                return len(self.requests)
            return sum(1 for r in self.requests if (r["body"] or {}).get("model") == model)

    def times(self) -> list[float]:
        """When each request arrived (monotonic), in order."""
        with self.lock:
            return [r["at"] for r in self.requests]

    def misbehave(self, scenario: str, times: int | None = None) -> "FakeUpstream":
        """Answer the next `times` calls (None: all, until `heal`) as the upstream model `scenario`."""
        with self.lock:
            self._behaviour, self._behaviour_left = scenario, times
        return self

    def heal(self) -> "FakeUpstream":
        with self.lock:
            self._behaviour, self._behaviour_left = None, None
        return self

    def _scenario(self, model: str) -> str:
        """The scenario this call gets: the misbehaviour set by the test, else its own model name."""
        with self.lock:
            if self._behaviour is None:
                return model
            scenario = self._behaviour
            if self._behaviour_left is not None:
                self._behaviour_left -= 1
                if self._behaviour_left <= 0:
                    self._behaviour, self._behaviour_left = None, None
            return scenario

    def _stream_started(self, delta: int) -> None:
        with self.lock:
            self.active_streams += delta
            self.peak_streams = max(self.peak_streams, self.active_streams)


def _handler_for(upstream: FakeUpstream):
    class Handler(_Handler):
        pass
    Handler.upstream = upstream
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: FakeUpstream

    def setup(self):
        super().setup()
        # head and body go out in two writes: without this each reused connection
        # would wait out a 40 ms delayed ACK
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.upstream.lock:
            self.upstream.connections += 1

    def log_message(self, *args):
        pass

    # --- routing ----------------------------------------------------------------------

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            return self._json(200, {"object": "list", "data": [
                {"id": "meta-llama/Llama-3.1-70B-Instruct", "object": "model", "created": 0, "owned_by": "fake"}]})
        self._json(404, _error("not found", "invalid_request_error"))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        record = {"path": self.path, "headers": dict(self.headers.items()), "body": body, "raw": raw,
                  "at": time.monotonic()}
        with self.upstream.lock:
            self.upstream.requests.append(record)
        if self.headers.get("Authorization") != f"Bearer {self.upstream.api_key}":
            return self._json(401, _error(f"Incorrect API key provided: {self.headers.get('Authorization')}",
                                          "invalid_request_error", code="invalid_api_key"))
        if not isinstance(body, dict):
            return self._json(400, _error("body is not JSON", "invalid_request_error"))
        model = str(body.get("model", ""))
        if self.path == "/v1/embeddings":
            return self._embeddings(body)
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._json(404, _error(f"no route {self.path}", "invalid_request_error"))
        model = self.upstream._scenario(model)
        if self.upstream.delay and self._client_gone(self.upstream.delay):
            return  # the gateway hung up while we made it wait
        if model.startswith("status-"):
            return self._status(model)
        if model.startswith("hang-") and self._client_gone(float(model.split("-")[1])):
            return  # the gateway hung up while we made it wait
        if model == "garbage":
            return self._raw(200, b"<html>not json</html>", "text/html")
        legacy = self.path == "/v1/completions"
        if body.get("stream"):
            return self._stream(model, body, legacy)
        self._json(200, _completion(body, legacy))

    # --- answers ----------------------------------------------------------------------

    def _status(self, model: str):
        parts = model.split("-")
        status = int(parts[1])
        kind = parts[2] if len(parts) > 2 else ""
        if kind == "context":
            body = _error("This model's maximum context length is 8192 tokens. However, you requested "
                          "9000 tokens.", "invalid_request_error", param="messages", code="context_length_exceeded")
        elif kind == "policy":
            body = _error("Your request was rejected as a result of our safety system.", "invalid_request_error",
                          code="content_policy_violation")
        elif status == 429:
            body = _error("Rate limit reached for requests", "requests", code="rate_limit_exceeded")
        elif status in (401, 403):
            body = _error(f"Incorrect API key provided: {self.upstream.api_key}", "invalid_request_error",
                          code="invalid_api_key")
        elif status >= 500:
            body = _error("The server had an error while processing your request.", "server_error")
        else:
            body = _error(f"Invalid parameter: upstream says no ({status}).", "invalid_request_error",
                          param="temperature", code="invalid_value")
        retry_after = self.upstream.retry_after or ("1" if status == 429 else None)
        self._json(status, body, {"Retry-After": retry_after} if retry_after else {})

    def _embeddings(self, body: dict):
        import base64
        import struct
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = []
        for i, _ in enumerate(inputs):
            vector = [0.1 * (i + 1), -0.2, 0.3, 0.4]
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack("<4f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        self._json(200, {"object": "list", "data": data, "model": body["model"],
                         "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}})

    def _stream(self, model: str, body: dict, legacy: bool):
        self.upstream._stream_started(+1)
        try:
            self._stream_events(model, body, legacy)
        finally:
            self.upstream._stream_started(-1)

    def _stream_events(self, model: str, body: dict, legacy: bool):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if model.startswith("fixture-"):
            events = _fixture_events(model[len("fixture-"):])
            return self._send_events(events, delay=0.0)
        kind, count, delay = _stream_shape(model)
        events = _generated_events(body, count, legacy, include_usage=(body.get("stream_options") or {})
                                   .get("include_usage") is True)
        if kind == "error":
            events = events[:count] + [b'data: {"error":{"message":"upstream overloaded","type":"server_error",'
                                       b'"param":null,"code":"overloaded"}}\n\n']
            return self._send_events(events, delay, terminate=True)
        if kind == "stall":
            self._send_events(events[:count], delay, terminate=False)
            if not self._client_gone(5.0):
                self._send_events(events[count:], delay)
            return
        if kind == "cut":
            self._send_events(events[:count], delay, terminate=False)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self._send_events(events, delay)

    def _send_events(self, events: list[bytes], delay: float, terminate: bool = True):
        for i, event in enumerate(events):
            if i and delay and self._client_gone(delay):
                return
            if not self._chunk(event):
                return
        if terminate:
            self._chunk(b"")

    def _client_gone(self, wait: float) -> bool:
        """Wait between chunks, noticing at once if the gateway closes the connection."""
        # poll(2), not select(2): a test holding over a thousand sockets gets descriptors >= 1024
        poller = select.poll()
        poller.register(self.connection, select.POLLIN)
        if poller.poll(wait * 1000):
            try:
                if self.connection.recv(1, socket.MSG_PEEK) == b"":
                    self._hung_up()
                    return True
            except OSError:
                self._hung_up()
                return True
        return False

    def _hung_up(self):
        with self.upstream.lock:
            self.upstream.hangups.append(time.monotonic())
        self.close_connection = True

    def _chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except OSError:
            self._hung_up()
            return False

    def _json(self, status: int, body: dict, headers: dict | None = None):
        self._raw(status, json.dumps(body).encode(), "application/json", headers)

    def _raw(self, status: int, data: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", "req_fakeupstream")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# --- bodies ---------------------------------------------------------------------------------

def _error(message, type_, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _last_user_text(body: dict) -> str:
    if "prompt" in body:
        prompt = body["prompt"]
        return prompt if isinstance(prompt, str) else json.dumps(prompt)
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
    return ""


def _completion(body: dict, legacy: bool) -> dict:
    text = f"echo: {_last_user_text(body)}"
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    model = f"{body['model']}-served"
    if legacy:
        return {"id": "cmpl-fake", "object": "text_completion", "created": 1727346142, "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1727346142, "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage}


def _stream_shape(model: str) -> tuple[str, int, float]:
    parts = model.split("-")
    if model.startswith("slow-"):
        return "slow", int(parts[1]), int(parts[2]) / 1000
    if model.startswith("stream-error-"):
        return "error", int(parts[2]), 0.01
    if model.startswith("stream-cut-"):
        return "cut", int(parts[2]), 0.01
    if model.startswith("stream-stall-"):
        return "stall", int(parts[2]), 0.01
    return "normal", 5, 0.0


def _generated_events(body: dict, count: int, legacy: bool, include_usage: bool) -> list[bytes]:
    model = f"{body['model']}-served"
    base = {"id": "chatcmpl-fakestream", "created": 1727346168, "model": model}
    events = []
    if legacy:
        base["object"] = "text_completion"
        for i in range(count):
            events.append({**base, "choices": [{"text": f"tok{i} ", "index": 0, "logprobs": None,
                                                "finish_reason": None}]})
        events.append({**base, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]})
    else:
        base["object"] = "chat.completion.chunk"
        base["system_fingerprint"] = "fp_fake"
        events.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]})
        for i in range(count):
            events.append({**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                                "logprobs": None, "finish_reason": None}]})
        events.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    if include_usage:
        events.append({**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": count,
                                                         "total_tokens": 11 + count}})
    encoded = [b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events]
    return encoded + [b"data: [DONE]\n\n"]


def _fixture_events(name: str) -> list[bytes]:
    """The recorded stream, event by event, exactly as OpenAI sent it."""
    raw = (FIXTURES / f"chat-stream-{name}.sse").read_bytes()
    return [event + b"\n\n" for event in raw.split(b"\n\n") if event.strip()]
