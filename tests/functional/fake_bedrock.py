"""A fake Amazon Bedrock runtime (Converse / ConverseStream) on 127.0.0.1 for functional tests.

It speaks Bedrock's real wire format: `POST /model/<url-quoted model id>/converse`
answers Converse JSON, `/converse-stream` answers a binary AWS event stream
(`application/vnd.amazon.eventstream`, written by `frame()` below and sent in
37-byte HTTP chunks, so frames arrive split), and errors come as AWS sends them:
the name in `x-amzn-ErrorType` and `{"message": …}` in the body.

Every request must be signed: the fake recomputes the SigV4 signature with
botocore's signer over the request exactly as it arrived (method, raw path,
the headers named in SignedHeaders, body, the X-Amz-Date sent) and the
credentials it was given, and answers 403 InvalidSignatureException on any
mismatch; with `api_key` set it accepts `Authorization: Bearer <api_key>` instead.

The model id picks the behaviour:
  error.<Name>[.context]    answer Bedrock's status for exception <Name> (`.context`: the
                            ValidationException wording of a prompt over the context window)
  stream-exception.<type>   stream a role and some text, then an exception frame of <type>
  fixture.<name>            stream tests/reference/fixtures/bedrock/converse-stream-<name>.bin
  stream-cut                stream some text, then drop the connection mid-frame
  anything else             tools given and no tool result yet: some text, then a call of the
                            forced tool (else the first) with TOOL_INPUT; a tool result in the
                            last turn: "The tool said: <result texts>"; otherwise "You said: <text>"
"""
from __future__ import annotations

import binascii
import datetime
import json
import re
import socket
import struct
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .loopback import LoopbackServer

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "bedrock"
TOOL_INPUT = {"city": "Paris"}
TOOL_USE_ID = "tooluse_fake_0001"
CACHE_READ, CACHE_WRITE = 3, 2
PIECE = 37   # bytes per HTTP chunk of a stream

EXCEPTIONS = {   # name → (status, message), from the service model's error shapes
    "ValidationException": (400, "1 validation error detected: Value at 'inferenceConfig.maxTokens' failed"),
    "AccessDeniedException": (403, "You don't have access to the model with the specified model ID."),
    "UnrecognizedClientException": (403, "The security token included in the request is invalid."),
    "ResourceNotFoundException": (404, "Could not resolve the foundation model from the provided model identifier."),
    "ModelTimeoutException": (408, "Model has timed out in processing the request."),
    "ThrottlingException": (429, "Too many requests, please wait before trying again."),
    "ModelNotReadyException": (429, "Model is not ready to serve inference requests."),
    "ModelErrorException": (424, "The model produced an error: /opt/ml/model/handler.py line 12"),
    "ServiceUnavailableException": (503, "Bedrock is unable to process your request."),
    "InternalServerException": (500, "Internal error at /var/task/coral/handler.py:88"),
}
CONTEXT_MESSAGE = "Input is too long for requested model."
_AUTH_FIELDS = re.compile(r"AWS4-HMAC-SHA256 Credential=([^,]+), SignedHeaders=([^,]+), Signature=([0-9a-f]+)$")


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC), string headers,
    payload, and the CRC of all that — the format botocore's EventStreamBuffer reads."""
    encoded = b"".join(bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value.encode()))
                       + value.encode() for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


def event(event_type: str, body: dict) -> bytes:
    return frame({":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(body, separators=(",", ":")).encode())


def exception(exception_type: str, message: str) -> bytes:
    return frame({":exception-type": exception_type, ":content-type": "application/json",
                  ":message-type": "exception"}, json.dumps({"message": message}).encode())


def signature_problem(method: str, raw_path: str, headers, body: bytes, credentials: Credentials,
                      region: str) -> str | None:
    """Why this request's SigV4 signature is not the one `credentials` make (None: it is)."""
    fields = _AUTH_FIELDS.match(headers.get("Authorization") or "")
    if not fields:
        return "no AWS4-HMAC-SHA256 Authorization header"
    scope, signed, signature = fields.groups()
    access_key, date, scope_region, service, terminator = (scope.split("/") + [""] * 5)[:5]
    if access_key != credentials.access_key:
        return "unknown access key"
    if (scope_region, service, terminator) != (region, "bedrock", "aws4_request"):
        return f"wrong credential scope {scope_region}/{service}/{terminator}"
    stamp = headers.get("X-Amz-Date") or ""
    try:
        when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "no X-Amz-Date"
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 300 or date != stamp[:8]:
        return "X-Amz-Date out of range"
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed"
    if credentials.token and ("x-amz-security-token" not in names
                              or headers.get("X-Amz-Security-Token") != credentials.token):
        return "missing or wrong session token"
    if not credentials.token and headers.get("X-Amz-Security-Token"):
        return "unexpected session token"
    received = AWSRequest(method=method, url=f"http://{headers.get('Host')}{raw_path}", data=body,
                          headers={name: headers.get(name, "") for name in names})
    received.context["timestamp"] = stamp
    signer = SigV4Auth(credentials, "bedrock", region)
    canonical = signer.canonical_request(received)
    if signer.signed_headers(signer.headers_to_sign(received)) != signed:
        return "SignedHeaders do not match the headers sent"
    if signer.signature(signer.string_to_sign(received, canonical), received) != signature:
        return "signature mismatch"
    return None


class FakeBedrock(LoopbackServer):
    def __init__(self, access_key: str, secret_key: str, session_token: str | None = None, *,
                 region: str = "us-east-1", api_key: str | None = None):
        super().__init__(_Handler)
        self.credentials = Credentials(access_key, secret_key, session_token)
        self.region = region
        self.api_key = api_key
        self.refused: list[str] = []      # why requests were refused (signature problems)

    def last_request(self, marker: str | None = None) -> dict:
        """The last request received (carrying `marker` in its raw body, when given)."""
        with self.lock:
            matching = [r for r in self.requests if marker is None or marker.encode() in r["raw"]]
        assert matching, f"the fake Bedrock received no request carrying {marker!r}"
        return matching[-1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeBedrock

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = re.fullmatch(r"/model/([^/]+)/(converse|converse-stream)", self.path)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        record = {"path": self.path, "headers": dict(self.headers.items()), "raw": raw, "body": body,
                  "model": unquote(match.group(1)) if match else None,
                  "operation": match.group(2) if match else None}
        with self.fake.lock:
            self.fake.requests.append(record)
        problem = self._auth_problem(raw)
        if problem:
            with self.fake.lock:
                self.fake.refused.append(problem)
            # AWS's own wording, which quotes the canonical request: the token and signature sent come back
            return self._error("InvalidSignatureException", 403, "The request signature we calculated does not "
                               "match the signature you provided. Check your AWS Secret Access Key and signing "
                               "method.\n\nThe Canonical String for this request should have been\n'POST\n"
                               f"{self.path}\nx-amz-security-token:{self.headers.get('X-Amz-Security-Token')}'\n"
                               f"Authorization: {self.headers.get('Authorization')}")
        if not match:
            return self._error("UnknownOperationException", 404, "")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error("ValidationException", 400, "1 validation error detected: messages is required")
        model = record["model"]
        if model.startswith("error."):
            name, _, kind = model[len("error."):].partition(".")
            status, message = EXCEPTIONS[name]
            return self._error(name, status, CONTEXT_MESSAGE if kind == "context" else message)
        if record["operation"] == "converse":
            return self._json(200, converse_answer(body))
        if model.startswith("fixture."):
            return self._stream((FIXTURES / f"converse-stream-{model[len('fixture.'):]}.bin").read_bytes())
        if model.startswith("stream-exception."):
            frames = stream_frames(body)[:3]
            return self._stream(b"".join(frames) + exception(model[len("stream-exception."):], "Stream failed."))
        if model == "stream-cut":
            data = b"".join(stream_frames(body)[:3])
            return self._stream(data + data[:20], cut=True)
        self._stream(b"".join(stream_frames(body)))

    def _auth_problem(self, raw: bytes) -> str | None:
        authorization = self.headers.get("Authorization") or ""
        if authorization.startswith("Bearer "):
            return None if self.fake.api_key and authorization == f"Bearer {self.fake.api_key}" else "bad API key"
        return signature_problem("POST", self.path, self.headers, raw, self.fake.credentials, self.fake.region)

    def _stream(self, data: bytes, cut: bool = False):
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-amzn-RequestId", "fake-request-id")
        self.end_headers()
        try:
            for start in range(0, len(data), PIECE):
                piece = data[start:start + PIECE]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            if cut:
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _error(self, name: str, status: int, message: str):
        self._json(status, {"message": message}, {"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/"
                                                                      "com.amazon.bedrock/"})

    def _json(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "fake-request-id")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# --- answers --------------------------------------------------------------------------------

def plan(body: dict) -> tuple[list[dict], str]:
    """The content blocks of the answer to `body`, and its stopReason."""
    last = body["messages"][-1]
    results = [b["toolResult"] for b in last["content"] if "toolResult" in b]
    tools = (body.get("toolConfig") or {}).get("tools") or []
    if results:
        said = " ".join(c.get("text", json.dumps(c.get("json"))) for r in results for c in r["content"])
        return [{"text": f"The tool said: {said}"}], "end_turn"
    if tools:
        forced = ((body["toolConfig"].get("toolChoice") or {}).get("tool") or {}).get("name")
        name = forced or tools[0]["toolSpec"]["name"]
        return [{"text": "Let me check."},
                {"toolUse": {"toolUseId": TOOL_USE_ID, "name": name, "input": TOOL_INPUT}}], "tool_use"
    text = " ".join(b["text"] for b in last["content"] if "text" in b)
    return [{"text": f"You said: {text}"}], "end_turn"


def usage(body: dict, blocks: list[dict]) -> dict:
    prompt = len(json.dumps(body["messages"])) // 10
    output = sum(len(json.dumps(b)) for b in blocks) // 10
    return {"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + CACHE_READ + CACHE_WRITE + output,
            "cacheReadInputTokens": CACHE_READ, "cacheWriteInputTokens": CACHE_WRITE}


def converse_answer(body: dict) -> dict:
    blocks, stop = plan(body)
    return {"output": {"message": {"role": "assistant", "content": blocks}}, "stopReason": stop,
            "usage": usage(body, blocks), "metrics": {"latencyMs": 42}}


def stream_frames(body: dict) -> list[bytes]:
    """The ConverseStream events of the answer: text in 3-character deltas, tool input in 4-character ones."""
    blocks, stop = plan(body)
    frames = [event("messageStart", {"role": "assistant"})]
    for index, block in enumerate(blocks):
        if "text" in block:
            text = block["text"]
            frames += [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": text[i:i + 3]}})
                       for i in range(0, len(text), 3)]
        else:
            use = block["toolUse"]
            frames.append(event("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
            arguments = json.dumps(use["input"])
            frames += [event("contentBlockDelta", {"contentBlockIndex": index,
                                                   "delta": {"toolUse": {"input": arguments[i:i + 4]}}})
                       for i in range(0, len(arguments), 4)]
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
    frames.append(event("messageStop", {"stopReason": stop}))
    frames.append(event("metadata", {"usage": usage(body, blocks), "metrics": {"latencyMs": 42}}))
    return frames
