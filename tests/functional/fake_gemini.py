"""A fake Gemini API (Generative Language API, v1beta) on 127.0.0.1 for functional tests.

It speaks Gemini's real wire format: `POST /v1beta/models/<model>:generateContent`,
`:streamGenerateContent?alt=sse` (CRLF-framed `data:` events, no terminator, cumulative
`usageMetadata` on each, sent chunked in 37-byte network pieces), `:batchEmbedContents`,
and Google RPC error bodies. Like Google it answers a call without the right
`x-goog-api-key` with 400 API_KEY_INVALID; a key in the query string is refused outright
(400) and counted in `keys_in_url`, and every request is recorded.

The upstream model name picks the behaviour:
  status-<code>[-context]   that HTTP status with Google's error body for it
                            (`-context`: 400 "The input token count … exceeds the maximum number of tokens …")
  stream-error              replay vertexai/streaming-failure-error-mid-stream.txt (text, then a raw JSON error)
  blocked                   the prompt is blocked: only `promptFeedback.blockReason`
  anything else             the last content holds function responses → "The tool said: <their results>",
                            refused (400, as Gemini 3 does) unless the model's calls came back with
                            their thoughtSignature; tools given → a thought part then one call of the
                            first function with TOOL_ARGS and SIGNATURE; otherwise ANSWER_TEXT.
"""
from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .loopback import LoopbackServer

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "gemini"
ANSWER_TEXT = "Hello from the fake Gemini."
TOOL_ARGS = {"city": "Paris"}                 # what provider_clients.check_round_trip expects
SIGNATURE = "CiIBVKhc7vB+vaaq6rA/KC79Ts7iXagIOA4EBOyBFDpl+pxPCmcBVKhc7gYy/g=="   # valid base64, with + / =
USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 7, "thoughtsTokenCount": 5, "totalTokenCount": 24}
PIECE = 37

ERRORS = {   # status → (RPC status, message)
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "Permission denied: Consumer 'api_key:xyz' has been suspended."),
    404: ("NOT_FOUND", "models/gemini-9 is not found for API version v1beta, or is not supported for "
                       "generateContent."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details."),
    500: ("INTERNAL", "An internal error has occurred at /borg/srv/frontend.cc:1234."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}
CONTEXT_MESSAGE = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."


class FakeGemini(LoopbackServer):
    def __init__(self, api_key: str):
        super().__init__(_Handler)
        self.api_key = api_key
        self.keys_in_url = 0
        self.base_url += "/v1beta"

    def last_request(self, model: str | None = None) -> dict:
        with self.lock:
            matching = [r for r in self.requests if model is None or r["model"] == model]
        assert matching, f"the fake Gemini received no request for {model!r}"
        return matching[-1]


def rpc_error(status: int, rpc: str, message: str, **extra) -> dict:
    return {"error": {"code": status, "message": message, "status": rpc, **extra}}


def _answer(parts: list, finish: str | None, usage: dict, model: str) -> dict:
    candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
            "responseId": "fake-response-id-1"}


def _reply(body: dict) -> list | dict:
    """The parts of the answer to `body`, or a Google error body when Gemini would refuse it."""
    contents = body.get("contents") or [{}]
    results = [p["functionResponse"] for p in contents[-1].get("parts") or () if "functionResponse" in p]
    if results:
        calls = [p for p in contents[-2].get("parts") or () if "functionCall" in p] if len(contents) > 1 else []
        if not calls or any(p.get("thoughtSignature") != SIGNATURE for p in calls):
            return rpc_error(400, "INVALID_ARGUMENT", "Function call is missing a thought_signature in "
                                                      "functionCall parts.")
        said = "; ".join(str(r["response"].get("result", json.dumps(r["response"]))) for r in results)
        return [{"text": "The tool said: "}, {"text": said}]
    if body.get("tools"):
        name = body["tools"][0]["functionDeclarations"][0]["name"]
        return [{"text": "**Planning**\n\nI should look the weather up.", "thought": True},
                {"functionCall": {"name": name, "args": TOOL_ARGS}, "thoughtSignature": SIGNATURE}]
    words = ANSWER_TEXT.split(" ")
    return [{"text": word + (" " if i < len(words) - 1 else "")} for i, word in enumerate(words)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeGemini

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = url.path.removeprefix("/v1beta/models/")
        model, _, method = path.partition(":")
        body = json.loads(raw) if raw else {}
        with self.fake.lock:
            self.fake.requests.append({"path": url.path, "query": url.query, "model": model, "method": method,
                                       "headers": dict(self.headers), "body": body})
            if "key" in query:
                self.fake.keys_in_url += 1
        if "key" in query:
            return self._json(400, rpc_error(400, "INVALID_ARGUMENT", "no keys in URLs, please"))
        if self.headers.get("x-goog-api-key") != self.fake.api_key:
            return self._json(400, json.loads((FIXTURES / "googleai" / "unary-failure-api-key.json").read_text()))
        if not url.path.startswith("/v1beta/models/"):
            return self._json(404, rpc_error(404, "NOT_FOUND", f"no such path {url.path}"))
        if method == "batchEmbedContents":
            return self._embed(model, body)
        if method == "streamGenerateContent" and query.get("alt") != ["sse"]:
            return self._json(400, rpc_error(400, "INVALID_ARGUMENT", "this fake streams SSE only"))
        if method not in ("generateContent", "streamGenerateContent"):
            return self._json(404, rpc_error(404, "NOT_FOUND", f"no method {method}"))
        self._generate(model, body, stream=method == "streamGenerateContent")

    def _generate(self, model: str, body: dict, stream: bool) -> None:
        if model.startswith("status-"):
            status = int(model.split("-")[1])
            rpc, message = ERRORS[status]
            if model.endswith("-context"):
                message = CONTEXT_MESSAGE
            return self._json(status, rpc_error(status, rpc, message))
        if model == "stream-error":
            return self._stream_bytes((FIXTURES / "vertexai" / "streaming-failure-error-mid-stream.txt").read_bytes())
        if model == "blocked":
            blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9,
                                                                                      "totalTokenCount": 9}}
            return self._stream_events([blocked]) if stream else self._json(200, blocked)
        parts = _reply(body)
        if isinstance(parts, dict):
            return self._json(parts["error"]["code"], parts)
        if not stream:
            return self._json(200, _answer(parts, "STOP", USAGE, model))
        events = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            usage = USAGE if last else {"promptTokenCount": USAGE["promptTokenCount"],
                                        "totalTokenCount": USAGE["promptTokenCount"] + i}
            events.append(_answer([part], "STOP" if last else None, usage, model))
        self._stream_events(events)

    def _embed(self, model: str, body: dict) -> None:
        vectors = []
        for request in body["requests"]:
            assert request["model"] == f"models/{model}", request
            text = request["content"]["parts"][0]["text"]
            size = request.get("outputDimensionality") or 4
            vectors.append({"values": [round(len(text) * 0.25 + i * 0.5, 4) for i in range(size)]})
        self._json(200, {"embeddings": vectors})

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body, indent=2).encode()     # Google pretty-prints its JSON
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream_events(self, events: list[dict]) -> None:
        self._stream_bytes(b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events))

    def _stream_bytes(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for start in range(0, len(data), PIECE):
                piece = data[start:start + PIECE]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
