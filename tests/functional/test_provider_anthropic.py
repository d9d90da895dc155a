"""`anthropic/<model>` through the real gateway (gunicorn, 2 gevent workers) to a loopback fake
Anthropic (fake_anthropic.py) that speaks the Messages wire format and checks `x-api-key` and
`anthropic-version`: the Python and Node `openai` SDKs and LangChain's ChatOpenAI round trip
(text, streams, tool calls, tool results), Anthropic's errors come out as the contract's rows,
parameters Anthropic cannot take are refused or dropped, and the Anthropic key appears in no
response and no log line.
"""
from __future__ import annotations

import json
import textwrap
import time

import openai
import pytest
import requests

from .conftest import MASTER_KEY
from .fake_anthropic import TOOL_INPUT, FakeAnthropic
from .gateway_process import GatewayProcess
from .openapi_schemas import check_exchange
from .provider_clients import (TEXT_PROMPT, check_round_trip, langchain_round_trip, python_round_trip,
                               requires_node, run_node_round_trips, weather_report)
from .wire import SSEResponse, assert_openai_error, assert_sse_framing, chat_body

ANTHROPIC_KEY = "sk-ant-api03-functional-secret-key-0123456789"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
TIMEOUT = 15
ECHO_TEXT = f"echo: {TEXT_PROMPT}"
FINAL = f"echo: {weather_report(TOOL_INPUT)}"

# client-facing name → (upstream model at the fake, extra litellm_params lines)
MODELS = {
    "claude": ("claude-sonnet-4-5", ""),
    "claude-v1-base": ("claude-sonnet-4-5", "v1"),
    "claude-wrong-key": ("claude-sonnet-4-5", "wrong-key"),
    "claude-drop": ("claude-sonnet-4-5", "drop"),
    "fixture-tool-use": ("fixture-tool-use", ""),
    "fixture-text": ("fixture-text", ""),
    "stream-error": ("stream-error", ""),
    **{f"fail-{status}": (f"status-{status}", "") for status in (400, 401, 403, 404, 413, 429, 500, 504, 529)},
    "fail-context": ("status-400-context", ""),
}


def config(fake: FakeAnthropic) -> str:
    entries = []
    for name, (model, variant) in MODELS.items():
        base = fake.base_url + ("/v1" if variant == "v1" else "")
        key = "sk-ant-api03-wrong-key" if variant == "wrong-key" else "os.environ/ANTHROPIC_TEST_KEY"
        extra = "\n      drop_params: true" if variant == "drop" else ""
        entries.append(f"""
  - model_name: {name}
    litellm_params:
      model: anthropic/{model}
      api_base: {base}
      api_key: {key}
      stream_timeout: 10{extra}""")
    return "model_list:" + "".join(entries) + f"""
router_settings:
  num_retries: 0
  cooldown_time: 0
general_settings:
  master_key: {MASTER_KEY}
"""


@pytest.fixture(scope="module")
def fake():
    server = FakeAnthropic(ANTHROPIC_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory):
    path = tmp_path_factory.mktemp("anthropic") / "config.yaml"
    path.write_text(config(fake))
    process = GatewayProcess(path, workers=2, env={"ANTHROPIC_TEST_KEY": ANTHROPIC_KEY}).start()
    yield process
    process.stop()
    assert ANTHROPIC_KEY not in process.logs()


@pytest.fixture
def sdk(gateway):
    with openai.OpenAI(api_key=MASTER_KEY, base_url=gateway.url + "/v1", max_retries=0, timeout=TIMEOUT) as client:
        yield client


def post(gateway, body: dict) -> requests.Response:
    response = requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=TIMEOUT)
    assert ANTHROPIC_KEY not in response.text and ANTHROPIC_KEY not in str(response.headers)
    return response


def stream_events(gateway, body: dict) -> SSEResponse:
    with SSEResponse.open(gateway.url, "/v1/chat/completions", {**body, "stream": True}, AUTH) as response:
        response.read_all()
    assert ANTHROPIC_KEY not in response.body.decode() and ANTHROPIC_KEY not in str(response.headers)
    return response


# --- the three clients --------------------------------------------------------------------------

@pytest.mark.parametrize("runner", [python_round_trip, langchain_round_trip], ids=["python-openai", "langchain"])
def test_python_clients_round_trip(gateway, fake, runner):
    result = runner(gateway.url, MASTER_KEY, "claude")
    check_round_trip(result, text=ECHO_TEXT, arguments=TOOL_INPUT, final_text=FINAL)
    # the tool result reached Anthropic as a tool_result block answering the tool_use it made
    turns = fake.last_request()["body"]["messages"]
    assert turns[-2]["content"][-1]["type"] == "tool_use"
    assert turns[-1]["content"] == [{"type": "tool_result", "tool_use_id": turns[-2]["content"][-1]["id"],
                                     "content": weather_report(TOOL_INPUT)}]


@requires_node
def test_node_sdk_round_trips(gateway):
    result = run_node_round_trips(gateway.url, MASTER_KEY, "claude")
    check_round_trip(result, text=ECHO_TEXT, arguments=TOOL_INPUT, final_text=FINAL)


def test_python_sdk_sync_chat_and_what_anthropic_received(sdk, fake):
    answer = sdk.chat.completions.create(model="claude", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        temperature=1.5, stop=["END"], user="user-7")
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop" and answer.model == "claude"
    assert answer.usage.prompt_tokens == 28 and answer.usage.completion_tokens == 9   # 21 + 2 cache writes + 5 reads
    assert answer.usage.prompt_tokens_details.cached_tokens == 5
    received = fake.last_request("hello there")
    assert received["path"] == "/v1/messages"
    assert received["headers"]["x-api-key"] == ANTHROPIC_KEY and received["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in received["headers"]
    assert received["body"] == {"model": "claude-sonnet-4-5", "max_tokens": 4096, "system": "Be brief.",
                                "messages": [{"role": "user", "content": "hello there"}], "temperature": 1,
                                "stop_sequences": ["END"], "metadata": {"user_id": "user-7"}}


def test_an_api_base_ending_in_v1_reaches_v1_messages(sdk, fake):
    answer = sdk.chat.completions.create(model="claude-v1-base", messages=[{"role": "user", "content": "v1 base"}])
    assert answer.choices[0].message.content == "echo: v1 base"
    assert fake.last_request("v1 base")["path"] == "/v1/messages"


def test_python_sdk_stream(sdk):
    stream = sdk.chat.completions.create(model="claude", messages=[{"role": "user", "content": "a streamed answer"}],
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: a streamed answer"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 37


def test_python_sdk_parallel_tool_calls_streamed(sdk, fake):
    tools = [{"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}} for name in ("get_weather", "get_time")]
    stream = sdk.chat.completions.create(model="claude", tools=tools, stream=True, parallel_tool_calls=True,
                                         messages=[{"role": "user", "content": "parallel please"}])
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert sorted(calls) == [0, 1] and finish == "tool_calls"
    assert [(calls[i]["id"], calls[i]["name"]) for i in (0, 1)] == [("toolu_01Fake0", "get_weather"),
                                                                    ("toolu_01Fake1", "get_time")]
    assert all(json.loads(calls[i]["arguments"]) == TOOL_INPUT for i in (0, 1))
    assert calls[0]["arguments"] == json.dumps(TOOL_INPUT)   # byte for byte as Anthropic streamed it
    assert "tool_choice" not in fake.last_request("parallel please")["body"]


def test_forced_tool_and_json_mode_reach_anthropic(sdk, fake):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    sdk.chat.completions.create(model="claude", messages=[{"role": "user", "content": "forced call"}], tools=[tool],
                                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                parallel_tool_calls=False,
                                response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    body = fake.last_request("forced call")["body"]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize("include_usage", [False, True])
def test_recorded_streams_through_the_gateway(gateway, include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    response = stream_events(gateway, chat_body("fixture-tool-use", **extra))
    assert_sse_framing(response)     # every chunk valid per OpenAI's spec, one [DONE] at the end
    result = check_exchange("POST", "/v1/chat/completions", response.status, response.header("content-type"),
                            response.body)
    chunks = [e for e in result["events"] if e != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        "I'll check the current weather in Paris for you."
    arguments = "".join(call["function"]["arguments"] for c in chunks if c["choices"]
                        for call in c["choices"][0]["delta"].get("tool_calls") or ())
    assert arguments == '{"location": "Paris"}'
    usage_chunks = [c for c in chunks if not c["choices"]]
    assert usage_chunks == ([chunks[-1]] if include_usage else [])
    if include_usage:
        assert chunks[-1]["usage"]["total_tokens"] == 377 + 65


def test_an_error_event_after_content_ends_the_stream_with_an_error_and_no_done(gateway):
    response = stream_events(gateway, chat_body("stream-error"))
    assert response.status == 200
    events = [e.json() for e in response.events]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "par" in json.dumps(events)
    assert set(events[-1]) == {"error"} and events[-1]["error"]["code"] == "upstream_error"
    assert b"[DONE]" not in response.body


def test_pings_alone_do_not_keep_a_stuck_stream_alive_past_stream_timeout(start_gateway, fake):
    """`ping` is a keep-alive: an upstream that sends nothing else ends in an in-band timeout."""
    text = textwrap.dedent(f"""\
        model_list:
          - model_name: claude-stuck
            litellm_params:
              model: anthropic/ping-forever
              api_base: {fake.base_url}
              api_key: os.environ/ANTHROPIC_TEST_KEY
              stream_timeout: 1
        general_settings:
          master_key: {MASTER_KEY}
        """)
    process = start_gateway(text, env={"ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})
    started = time.monotonic()
    response = stream_events(process, chat_body("claude-stuck"))
    elapsed = time.monotonic() - started
    events = [e.json() for e in response.events]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert text and "thinking it over".startswith(text)
    assert set(events[-1]) == {"error"} and events[-1]["error"]["code"] == "upstream_timeout"
    assert b"[DONE]" not in response.body
    assert elapsed < 5   # the fake pings for 6 s: the gateway gave up at its stream_timeout, not at the fake's end


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, status, type_, code", [
    ("fail-401", 502, "api_error", "upstream_auth_error"),
    ("fail-403", 502, "api_error", "upstream_auth_error"),
    ("claude-wrong-key", 502, "api_error", "upstream_auth_error"),
    ("fail-404", 404, "invalid_request_error", None),
    ("fail-400", 400, "invalid_request_error", None),
    ("fail-context", 400, "invalid_request_error", "context_length_exceeded"),
    ("fail-429", 429, "rate_limit_error", "rate_limit_exceeded"),
    ("fail-529", 502, "api_error", "upstream_error"),
    ("fail-413", 502, "api_error", "upstream_error"),
    ("fail-500", 502, "api_error", "upstream_error"),
    ("fail-504", 504, "api_error", "upstream_timeout"),
])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_errors_over_http(gateway, model, status, type_, code, stream):
    response = post(gateway, chat_body(model, stream=stream))
    error = assert_openai_error(response, status, type_, code=code)
    if model == "fail-context":
        assert error["param"] == "messages" and "prompt is too long" in error["message"]
    if model in ("fail-400", "fail-404"):
        assert error["message"] in ("messages.0.content: field required", "model: claude-nonexistent")
    if model in ("fail-429", "fail-529"):
        assert response.headers["Retry-After"] == "1"    # Anthropic's retry-after, kept
    if status in (502, 504):
        assert "Internal server error" not in error["message"] and "x-api-key" not in error["message"]


# --- parameters Anthropic cannot take ----------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("logprobs", True), ("n", 2), ("seed", 3), ("presence_penalty", 0.5),
                                         ("top_k_typo", 5)])
def test_an_unsupported_parameter_is_refused_naming_it(gateway, name, value):
    response = post(gateway, chat_body("claude", **{name: value}))
    error = assert_openai_error(response, 400, "invalid_request_error", code="unsupported_parameter", param=name)
    assert "Anthropic" in error["message"]


def test_drop_params_leaves_them_out(gateway, fake):
    response = post(gateway, chat_body("claude-drop", "dropping", logprobs=True, seed=3, n=2, top_k=5))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: dropping"
    assert fake.last_request("dropping")["body"] == {
        "model": "claude-sonnet-4-5", "max_tokens": 4096, "top_k": 5,
        "messages": [{"role": "user", "content": "dropping"}]}


def test_drop_params_from_litellm_settings(start_gateway, fake):
    """`litellm_settings.drop_params` applies to every deployment that does not say otherwise."""
    text = textwrap.dedent(f"""\
        model_list:
          - model_name: claude
            litellm_params:
              model: anthropic/claude-sonnet-4-5
              api_base: {fake.base_url}
              api_key: os.environ/ANTHROPIC_TEST_KEY
        litellm_settings:
          drop_params: true
        general_settings:
          master_key: {MASTER_KEY}
        """)
    process = start_gateway(text, env={"ANTHROPIC_TEST_KEY": ANTHROPIC_KEY})
    response = post(process, chat_body("claude", "globally dropped", frequency_penalty=1.0, max_tokens=64))
    assert response.status_code == 200, response.text
    assert fake.last_request("globally dropped")["body"] == {
        "model": "claude-sonnet-4-5", "max_tokens": 64,
        "messages": [{"role": "user", "content": "globally dropped"}]}
    assert ANTHROPIC_KEY not in process.logs()


def test_the_key_is_in_no_log_line(gateway):
    post(gateway, chat_body("fail-401"))
    post(gateway, chat_body("fail-500"))
    logs = gateway.logs()
    assert logs and ANTHROPIC_KEY not in logs


def test_json_mode_through_the_openai_sdk_whole_and_streamed(gateway, fake):
    """`response_format: json_object`: the fake is made to call the JSON tool; the SDK sees JSON text."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, max_retries=0)
    messages = [{"role": "user", "content": "weather as JSON, please"}]
    answer = client.chat.completions.create(model="claude", messages=messages,
                                            response_format={"type": "json_object"})
    assert json.loads(answer.choices[0].message.content) == TOOL_INPUT
    assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls
    sent = fake.last_request("weather as JSON")["body"]
    assert sent["tool_choice"] == {"type": "tool", "name": "json_answer"}
    streamed = client.chat.completions.create(model="claude", messages=messages, stream=True,
                                              response_format={"type": "json_object"})
    chunks = list(streamed)
    assert json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)) == TOOL_INPUT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
