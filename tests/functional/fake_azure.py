"""A loopback Azure OpenAI resource: deployment URLs, `api-key`, its stream preamble and its error bodies.

POST /openai/deployments/{deployment}/{chat/completions|embeddings}?api-version=…, and the v1
API's /openai/v1/chat/completions (deployment in the body's `model`). The key must come as
`api-key` (or an Entra token as `Authorization: Bearer`), the api-version must be given;
otherwise 401 / 404 with Azure's own bodies. Streams open with Azure's content-filter
preamble (empty id, model and choices) and carry `content_filter_results` on every choice,
as Azure's service does. Answers follow provider_clients.py's round-trip protocol.

Deployments with a behaviour: `filtered` (400 content_filter, the prompt refused),
`missing` (404 DeploymentNotFound, no type), `throttled` (429 with the numeric-string code
Azure uses and retry-after), `context` (400 context_length_exceeded).
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

AZURE_KEY = "azure-resource-key-5e1f0c"
AD_TOKEN = "entra-id-token-77aa"
TEXT_PIECES = ["Ahoy", " from", " Azure", "!"]
ARGUMENT_PIECES = ['{"ci', 'ty": "Pa', 'ris"}']
USAGE = {"prompt_tokens": 19, "completion_tokens": 6, "total_tokens": 25}
FILTER_RESULTS = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
                  "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}
PREAMBLE = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]}
ERRORS = {
    "filtered": (400, {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's "
                                            "content management policy.", "type": None, "param": "prompt",
                                 "code": "content_filter", "status": 400,
                                 "innererror": {"code": "ResponsibleAIPolicyViolation",
                                                "content_filter_result": {"hate": {"filtered": True,
                                                                                   "severity": "high"}}}}}),
    "missing": (404, {"error": {"code": "DeploymentNotFound",
                                "message": "The API deployment for this resource does not exist. If you created the "
                                           "deployment within the last 5 minutes, please wait a moment and try again."}}),
    "throttled": (429, {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under "
                                                            "Azure OpenAI API version 2024-10-21 have exceeded "
                                                            "token rate limit of your current tier."}}),
    "context": (400, {"error": {"message": "This model's maximum context length is 128000 tokens. However, your "
                                           "messages resulted in 130000 tokens.", "type": "invalid_request_error",
                                "param": "messages", "code": "context_length_exceeded"}}),
}


class FakeAzure:
    def __init__(self):
        self.requests: list[dict] = []     # {"path", "query", "headers", "body"}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _handler_for(azure: FakeAzure):
    class Handler(_Handler):
        pass
    Handler.azure = azure
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    azure: FakeAzure

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.azure.requests.append({"path": url.path, "query": query, "headers": dict(self.headers), "body": body})
        if self.headers.get("api-key") != AZURE_KEY and self.headers.get("Authorization") != f"Bearer {AD_TOKEN}":
            return self._json(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription "
                                              "key or wrong API endpoint. Make sure to provide a valid key for an "
                                              "active subscription and use a correct regional API endpoint for your "
                                              "resource."}})
        parts = url.path.strip("/").split("/")
        if parts[:2] == ["openai", "v1"]:
            deployment, operation = body.get("model"), "/".join(parts[2:])
        elif parts[:2] == ["openai", "deployments"] and len(parts) >= 4 and query.get("api-version"):
            deployment, operation = parts[2], "/".join(parts[3:])
        else:
            return self._json(404, {"error": {"code": "404", "message": "Resource not found"}})
        if deployment in ERRORS:
            status, error = ERRORS[deployment]
            return self._json(status, error, {"retry-after": "2"} if status == 429 else {})
        if operation == "embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return self._json(200, {"object": "list", "model": "text-embedding-3-small",
                                    "data": [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, float(i)]}
                                             for i in range(len(inputs))],
                                    "usage": {"prompt_tokens": 4, "total_tokens": 4}})
        last = body["messages"][-1]
        if last["role"] == "tool":
            answer = {"text": [f"The tool said: {last['content']}"]}
        elif body.get("tools"):
            answer = {"call": "call_azure_" + ("stream" if body.get("stream") else "whole")}
        else:
            answer = {"text": TEXT_PIECES}
        if body.get("stream"):
            return self._stream(body, answer)
        return self._json(200, _whole(answer))

    def _stream(self, body: dict, answer: dict):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [PREAMBLE, *_chunks(answer)]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**_chunk({}), "choices": [], "usage": USAGE})
        for event in events:
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("apim-request-id", "3f2d-fake")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _whole(answer: dict) -> dict:
    message = {"role": "assistant", "content": "".join(answer.get("text", [])) or None, "refusal": None}
    if "call" in answer:
        message["tool_calls"] = [{"id": answer["call"], "type": "function",
                                  "function": {"name": "get_weather", "arguments": "".join(ARGUMENT_PIECES)}}]
    return {"id": "chatcmpl-azure", "object": "chat.completion", "created": 1727346142,
            "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_azure",
            "prompt_filter_results": PREAMBLE["prompt_filter_results"],
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if "call" in answer else "stop",
                         "content_filter_results": FILTER_RESULTS}],
            "usage": USAGE}


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-azure", "object": "chat.completion.chunk", "created": 1727346168,
            "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_azure",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                         "content_filter_results": FILTER_RESULTS if delta.get("content") else {}}]}


def _chunks(answer: dict) -> list[dict]:
    if "call" in answer:
        chunks = [_chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": answer["call"], "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]})]
        chunks += [_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                   for piece in ARGUMENT_PIECES]
        return chunks + [_chunk({}, "tool_calls")]
    return [_chunk({"role": "assistant", "content": ""}), *(_chunk({"content": t}) for t in answer["text"]),
            _chunk({}, "stop")]
