"""The provider round-trip runners (provider_clients.py), proven through a real gateway.

A scripted OpenAI-compatible fake, written here, answers exactly as the runners'
docstring asks a provider's fake to: text for a call without tools, a get_weather call
(arguments split over several stream deltas) for a call with tools, and text echoing the
tool result for the follow-up. Each runner's result must equal what the fake sent, the
fake must have received the tool results under the ids it gave, and an answer that
breaks OpenAI's spec must make every runner fail.
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import MASTER_KEY, UPSTREAM_KEY, quiet_config
from .openapi_schemas import SpecViolation
from .provider_clients import (TEXT_PROMPT, TOOL_PROMPT, WEATHER_TOOL, check_round_trip, langchain_round_trip,
                               python_round_trip, requires_node, run_node_round_trips, weather_report)

TEXT_PIECES = ["Hel", "lo from", " the scripted", " upstream!"]
TEXT = "".join(TEXT_PIECES)
ARGUMENT_PIECES = ['{"ci', 'ty": "Pa', 'ris"}']
ARGUMENTS = {"city": "Paris"}
CALL_ID, STREAM_CALL_ID = "call_scripted_whole", "call_scripted_stream"
FINAL = f"The tool said: {weather_report(ARGUMENTS)}"


class ScriptedUpstream:
    """POST /v1/chat/completions on 127.0.0.1, answering as a provider's fake must (see
    provider_clients.py). Upstream model `off-spec`: the same answers, but the stream chunks
    lack `created`, which OpenAI's spec requires."""

    def __init__(self):
        self.requests: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _handler_for(upstream: ScriptedUpstream):
    class Handler(_Handler):
        pass
    Handler.upstream = upstream
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: ScriptedUpstream

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.upstream.requests.append(body)
        if self.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}" or self.path != "/v1/chat/completions":
            return self._send(401, "application/json", b'{"error":{"message":"no","type":"auth","param":null,'
                                                       b'"code":null}}')
        stream, off_spec = body.get("stream") is True, body["model"] == "off-spec"
        last = body["messages"][-1]
        if last["role"] == "tool":
            answer = {"text": [f"The tool said: {last['content']}"[:9], f"The tool said: {last['content']}"[9:]]}
        elif body.get("tools"):
            answer = {"call": STREAM_CALL_ID if stream else CALL_ID}
        else:
            answer = {"text": TEXT_PIECES}
        if not stream:
            return self._send(200, "application/json", json.dumps(_whole(body["model"], answer)).encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in _chunks(body, answer):
            if off_spec:
                chunk.pop("created")
            self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send(self, status: int, content_type: str, data: bytes):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


USAGE = {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22}


def _whole(model: str, answer: dict) -> dict:
    message = {"role": "assistant", "content": "".join(answer.get("text", [])) or None, "refusal": None}
    if "call" in answer:
        message["tool_calls"] = [{"id": answer["call"], "type": "function",
                                  "function": {"name": "get_weather", "arguments": "".join(ARGUMENT_PIECES)}}]
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 1727346142, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if "call" in answer else "stop"}],
            "usage": USAGE}


def _chunks(body: dict, answer: dict) -> list[dict]:
    def chunk(delta, finish=None):
        return {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1727346168,
                "model": body["model"], "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                     "finish_reason": finish}]}
    if "call" in answer:
        chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": answer["call"], "type": "function", "function": {"name": "get_weather",
                                                                               "arguments": ""}}]})]
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                   for piece in ARGUMENT_PIECES]
        chunks.append(chunk({}, "tool_calls"))
    else:
        chunks = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": t}) for t in answer["text"]]
        chunks.append(chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**chunk({}), "choices": [], "usage": USAGE})
    return chunks


@pytest.fixture
def scripted():
    server = ScriptedUpstream()
    yield server
    server.stop()


@pytest.fixture
def gateway_to_scripted(scripted, start_gateway):
    return start_gateway(quiet_config(scripted.base_url, {"scripted": "scripted", "off-spec": "off-spec"}),
                         env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})


def _check_upstream_saw(requests: list[dict], *, tools_from: str) -> None:
    """The six calls arrived in order, with the tools, and with each tool result under the fake's id."""
    assert len(requests) == 6, [r["messages"] for r in requests]
    text, stream, ask, answer, stream_ask, stream_answer = requests
    for request in (text, stream):
        assert request["messages"] == [{"role": "user", "content": TEXT_PROMPT}] and "tools" not in request
    assert stream["stream"] is True and not ask.get("stream") and stream_ask["stream"] is True
    for request in (ask, stream_ask):
        assert request["messages"] == [{"role": "user", "content": TOOL_PROMPT}]
        assert request["tool_choice"] == "auto"
    for request in (ask, answer, stream_ask, stream_answer):
        (tool,) = request["tools"]
        if tools_from == "WEATHER_TOOL":
            assert tool == WEATHER_TOOL
        else:  # LangChain derives the schema from get_weather's signature and docstring
            assert tool["function"]["name"] == "get_weather"
            assert tool["function"]["parameters"] == WEATHER_TOOL["function"]["parameters"]
    for request, call_id in ((answer, CALL_ID), (stream_answer, STREAM_CALL_ID)):
        user, assistant, result = request["messages"]
        assert user == {"role": "user", "content": TOOL_PROMPT}
        (call,) = assistant["tool_calls"]
        assert (call["id"], call["function"]["name"]) == (call_id, "get_weather")
        assert json.loads(call["function"]["arguments"]) == ARGUMENTS
        assert result == {"role": "tool", "tool_call_id": call_id, "content": weather_report(ARGUMENTS)}


def _check_ids(result: dict) -> None:
    assert (result["tool_call_ids"], result["stream_tool_call_ids"]) == ([CALL_ID], [STREAM_CALL_ID])


def test_python_sdk_round_trips(gateway_to_scripted, scripted):
    result = python_round_trip(gateway_to_scripted.url, MASTER_KEY, "scripted")

    check_round_trip(result, text=TEXT, arguments=ARGUMENTS, final_text=FINAL)
    _check_ids(result)
    assert result["usage"] == USAGE and result["stream_usage"] == USAGE
    _check_upstream_saw(scripted.requests, tools_from="WEATHER_TOOL")


def test_langchain_round_trips(gateway_to_scripted, scripted):
    result = langchain_round_trip(gateway_to_scripted.url + "/v1", MASTER_KEY, "scripted")

    check_round_trip(result, text=TEXT, arguments=ARGUMENTS, final_text=FINAL)
    _check_ids(result)
    assert result["usage"] == USAGE and result["stream_usage"] == USAGE
    _check_upstream_saw(scripted.requests, tools_from="get_weather")


@requires_node
def test_node_sdk_round_trips(gateway_to_scripted, scripted):
    result = run_node_round_trips(gateway_to_scripted.url, MASTER_KEY, "scripted")

    check_round_trip(result, text=TEXT, arguments=ARGUMENTS, final_text=FINAL)
    _check_ids(result)
    assert result["usage"] == USAGE and result["stream_usage"] == USAGE
    _check_upstream_saw(scripted.requests, tools_from="WEATHER_TOOL")


def test_check_round_trip_catches_a_wrong_answer(gateway_to_scripted):
    result = python_round_trip(gateway_to_scripted.url, MASTER_KEY, "scripted")

    with pytest.raises(AssertionError, match="stream_final_text"):
        check_round_trip(result, text=TEXT, arguments=ARGUMENTS, final_text=FINAL, stream_final_text="other")
    with pytest.raises(AssertionError, match="tool_calls"):
        check_round_trip(result, text=TEXT, arguments={"city": "Rome"}, final_text=FINAL)


def test_python_runners_reject_off_spec_chunks(gateway_to_scripted):
    for runner in (python_round_trip, langchain_round_trip):
        with pytest.raises(SpecViolation, match="call 2: .*'created' is a required property"):
            runner(gateway_to_scripted.url, MASTER_KEY, "off-spec")


@requires_node
def test_node_runner_rejects_off_spec_chunks(gateway_to_scripted):
    with pytest.raises(SpecViolation, match="call 2: .*'created' is a required property"):
        run_node_round_trips(gateway_to_scripted.url, MASTER_KEY, "off-spec")
