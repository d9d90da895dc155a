"""Three real clients' round trips through a running gateway, for every provider's functional test.

Each runner drives one real client against the gateway and returns the same dict, so a
provider test proves the Node `openai` SDK, LangChain's `ChatOpenAI` and the Python
`openai` SDK in a few lines:

    from .provider_clients import (check_round_trip, langchain_round_trip, python_round_trip,
                                   requires_node, run_node_round_trips, weather_report)

    FINAL = f"The tool said: {weather_report({'city': 'Paris'})}"   # what the fake answers call 4 and 6

    @pytest.mark.parametrize("runner", [python_round_trip, langchain_round_trip])
    def test_python_clients_round_trip(runner, my_gateway):
        result = runner(my_gateway.url, MASTER_KEY, "claude")
        check_round_trip(result, text=FAKE_TEXT, arguments={"city": "Paris"}, final_text=FINAL)

    @requires_node
    def test_node_sdk_round_trips(my_gateway):
        result = run_node_round_trips(my_gateway.url, MASTER_KEY, "claude")
        check_round_trip(result, text=FAKE_TEXT, arguments={"city": "Paris"}, final_text=FINAL)

`base_url` is the gateway's root URL (`GatewayProcess.url`; "/v1" is added when missing),
`api_key` a key the gateway accepts, `model` the client-facing model name of the group that
points at your fake. The `openai` npm package is installed once per pytest process into a
temp dir (`node_openai_dir()`, reused by every provider test that runs in the same session;
`requires_node` skips a test when node or npm is missing, and the runner skips too). It is a
plain function, not a fixture: a fixture imported into a test module trips ruff's F811.

Each runner makes six calls, in this order, and validates every answer it receives
against OpenAI's OpenAPI spec (the JSON bodies and each SSE chunk, as read off the wire,
not the SDK's lenient parse of it): a failing answer raises `SpecViolation` (an
AssertionError) naming the call.
  1. text:          messages [user TEXT_PROMPT], no tools
  2. stream:        the same with "stream": true and stream_options.include_usage
  3. tools:         [user TOOL_PROMPT], tools [WEATHER_TOOL], tool_choice (default "auto")
  4. tool result:   [user, assistant with the tool_calls of 3, one `tool` message per call
                    whose content is weather_report(arguments)], tools, no tool_choice
  5. stream tools:  3 streamed; tool-call deltas accumulated by index
  6. stream result: 4 streamed, built from the calls of 5
(LangChain sends `get_weather`'s schema as bind_tools derives it from the function: the
same name and parameters as WEATHER_TOOL but with the docstring's argument description.)

What your fake upstream must do, in its own wire format:
  * no tools in the request → answer text (your choice; streamed as several text deltas);
  * tools in the request and the last message is not a tool result → one `get_weather`
    call, e.g. arguments {"city": "Paris"} (streamed: split the arguments over several
    deltas; that is the point);
  * the last message carries the tool result → text that contains the tool result it
    received (e.g. f"The tool said: {result}"), which proves the result reached it;
  * finish reasons must come out "stop" for text and "tool_calls" for the tool call, and a
    streamed answer must give the gateway usage (or let it estimate: the usage chunk is
    always asked for).

The returned dict (all three clients alike):
  text, finish_reason, usage                      call 1 (usage as OpenAI names it)
  stream_text, stream_finish_reason, stream_usage call 2 (usage from the include_usage chunk)
  tool_calls [{"name", "arguments"}], tool_call_ids, tool_finish_reason        call 3
  final_text                                      call 4
  stream_tool_calls, stream_tool_call_ids, stream_tool_finish_reason           call 5
  stream_final_text                               call 6
  exchanges                                       HTTP answers validated against the spec
where "arguments" is the JSON-decoded arguments object. `check_round_trip` asserts all of
it (finish reasons, usage arithmetic, ids present, six answers validated); tests that want
more (e.g. the exact upstream tool id) read the dict.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .openapi_schemas import NODE_FETCH_RECORDER, SpecViolation, check_exchange, record_httpx

TEXT_PROMPT = "Say hello to the round trip."
TOOL_PROMPT = "What is the weather in Paris?"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city, e.g. Paris."}},
                   "required": ["city"]}}}
REPORT = "Sunny, 21 C in {city}"       # the tool's answer, sent back as the `tool` message
CALLS = 6                               # HTTP calls each runner makes
TIMEOUT = 30.0                          # seconds per call
NODE_TIMEOUT = 90.0                     # the whole node script

requires_node = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                   reason="node and npm are needed for the Node openai SDK round trips")


def weather_report(arguments: dict) -> str:
    """What the clients send back as the result of a get_weather call with these arguments."""
    return REPORT.format(city=arguments.get("city"))


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city, e.g. Paris.
    """
    return weather_report({"city": city})


def check_round_trip(result: dict, *, text: str, arguments: dict, final_text: str, stream_text: str | None = None,
                     stream_final_text: str | None = None, name: str = "get_weather") -> None:
    """Assert a runner's result: what the fake sent came out, with the right finish reasons and usage."""
    client = result.get("client", "?")
    expected = {
        "text": text, "finish_reason": "stop",
        "stream_text": text if stream_text is None else stream_text, "stream_finish_reason": "stop",
        "tool_calls": [{"name": name, "arguments": arguments}], "tool_finish_reason": "tool_calls",
        "final_text": final_text,
        "stream_tool_calls": [{"name": name, "arguments": arguments}], "stream_tool_finish_reason": "tool_calls",
        "stream_final_text": final_text if stream_final_text is None else stream_final_text,
        "exchanges": CALLS,
    }
    got = {key: result.get(key) for key in expected}
    assert got == expected, f"{client} round trips:\n got      {got}\n expected {expected}"
    for key in ("tool_call_ids", "stream_tool_call_ids"):
        ids = result.get(key) or []
        assert len(ids) == 1 and isinstance(ids[0], str) and ids[0], f"{client}: {key} = {ids!r}"
    for key in ("usage", "stream_usage"):
        usage = result.get(key)
        assert isinstance(usage, dict), f"{client}: no {key}"
        counts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")]
        assert all(isinstance(c, int) and c >= 0 for c in counts) and counts[2] == counts[0] + counts[1], \
            f"{client}: {key} = {usage}"


def _v1(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def _call(name: str, arguments: str) -> dict:
    try:
        decoded = json.loads(arguments)
    except ValueError:
        raise AssertionError(f"tool call {name!r}: arguments are not JSON: {arguments!r}") from None
    return {"name": name, "arguments": decoded}


def _usage(usage) -> dict | None:
    if usage is None:
        return None
    usage = usage if isinstance(usage, dict) else usage.model_dump()
    return {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


# --- the Python openai SDK --------------------------------------------------------------------------

def _record_and_check(client: str, run) -> dict:
    """Run `run()` with every httpx answer recorded, then validate each against the spec."""
    exchanges: list = []
    undo = record_httpx(exchanges)
    try:
        result = run()
    finally:
        undo()
    for number, exchange in enumerate(exchanges, 1):
        _check_answer(f"{client}, call {number}", exchange.method, exchange.path, exchange.status,
                      exchange.content_type, exchange.body, exchange.request_body)
    return {"client": client, **result, "exchanges": len(exchanges)}


def _check_answer(what: str, method: str, path: str, status: int, content_type: str, body: bytes,
                  request_body: dict | None) -> None:
    """One recorded answer against the spec; a stream must also end with `data: [DONE]`."""
    try:
        checked = check_exchange(method, path, status, content_type, body, request_body)
    except SpecViolation as violation:
        raise SpecViolation(f"{what}: {violation}\n  body: {body[:2000]!r}") from None
    if "events" in checked:
        assert checked["events"][-1:] == ["[DONE]"], f"{what}: the stream did not end with [DONE]: {body[-500:]!r}"


def _sdk_stream(stream) -> tuple[str, str | None, dict | None, list[dict]]:
    """Text, finish reason, usage and tool calls (accumulated by index) of an openai SDK stream."""
    text, finish, usage, calls = "", None, None, {}
    for chunk in stream:
        if chunk.usage is not None:
            usage = _usage(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    return text, finish, usage, [calls[i] for i in sorted(calls)]


def _tool_turns(content, calls: list[dict]) -> list[dict]:
    """The assistant turn carrying `calls` ({"id","name","arguments"}) and one tool message per call."""
    assistant = {"role": "assistant", "content": content, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]}
    results = [{"role": "tool", "tool_call_id": c["id"], "content": weather_report(json.loads(c["arguments"]))}
               for c in calls]
    return [assistant, *results]


def python_round_trip(base_url: str, api_key: str, model: str, *, tool_choice="auto") -> dict:
    """The six calls with the Python `openai` SDK (see the module docstring)."""
    import openai

    def run() -> dict:
        out = {}
        with openai.OpenAI(api_key=api_key, base_url=_v1(base_url), max_retries=0, timeout=TIMEOUT) as sdk:
            create = sdk.chat.completions.create
            answer = create(model=model, messages=[{"role": "user", "content": TEXT_PROMPT}])
            out.update(text=answer.choices[0].message.content, finish_reason=answer.choices[0].finish_reason,
                       usage=_usage(answer.usage))

            text, finish, usage, _ = _sdk_stream(create(
                model=model, messages=[{"role": "user", "content": TEXT_PROMPT}], stream=True,
                stream_options={"include_usage": True}))
            out.update(stream_text=text, stream_finish_reason=finish, stream_usage=usage)

            ask = [{"role": "user", "content": TOOL_PROMPT}]
            answer = create(model=model, messages=ask, tools=[WEATHER_TOOL], tool_choice=tool_choice)
            message = answer.choices[0].message
            calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                     for c in message.tool_calls or ()]
            out.update(tool_calls=[_call(c["name"], c["arguments"]) for c in calls],
                       tool_call_ids=[c["id"] for c in calls], tool_finish_reason=answer.choices[0].finish_reason)
            if calls:
                final = create(model=model, messages=ask + _tool_turns(message.content, calls), tools=[WEATHER_TOOL])
                out["final_text"] = final.choices[0].message.content

            text, finish, _, calls = _sdk_stream(create(model=model, messages=ask, tools=[WEATHER_TOOL],
                                                        tool_choice=tool_choice, stream=True))
            out.update(stream_tool_calls=[_call(c["name"], c["arguments"]) for c in calls],
                       stream_tool_call_ids=[c["id"] for c in calls], stream_tool_finish_reason=finish)
            if calls:
                final_text, _, _, _ = _sdk_stream(create(model=model, messages=ask + _tool_turns(text or None, calls),
                                                         tools=[WEATHER_TOOL], stream=True))
                out["stream_final_text"] = final_text
        return out

    return _record_and_check("python openai", run)


# --- LangChain ChatOpenAI ---------------------------------------------------------------------------

def _langchain_usage(message) -> dict | None:
    meta = message.usage_metadata
    if not meta:
        return None
    return {"prompt_tokens": meta["input_tokens"], "completion_tokens": meta["output_tokens"],
            "total_tokens": meta["total_tokens"]}


def _streamed(runnable, messages):
    """All chunks of a LangChain stream, added up into one AIMessageChunk."""
    total = None
    for chunk in runnable.stream(messages):
        total = chunk if total is None else total + chunk
    assert total is not None, "the LangChain stream yielded nothing"
    return total


def _chunk_calls(total) -> list[dict]:
    """Tool calls from the raw tool_call_chunks (argument strings concatenated by index)."""
    calls = sorted(total.tool_call_chunks, key=lambda c: c.get("index") or 0)
    return [_call(c.get("name") or "", c.get("args") or "") for c in calls]


def langchain_round_trip(base_url: str, api_key: str, model: str, *, tool_choice="auto") -> dict:
    """The six calls with LangChain's ChatOpenAI and `bind_tools([get_weather])` (see the module docstring)."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    def run() -> dict:
        llm = ChatOpenAI(model=model, base_url=_v1(base_url), api_key=api_key, max_retries=0, timeout=TIMEOUT,
                         stream_usage=True)
        answer = llm.invoke([HumanMessage(TEXT_PROMPT)])
        out = {"text": answer.content, "finish_reason": answer.response_metadata.get("finish_reason"),
               "usage": _langchain_usage(answer)}
        total = _streamed(llm, [HumanMessage(TEXT_PROMPT)])
        out.update(stream_text=total.content, stream_finish_reason=total.response_metadata.get("finish_reason"),
                   stream_usage=_langchain_usage(total))

        asking, answering = llm.bind_tools([get_weather], tool_choice=tool_choice), llm.bind_tools([get_weather])
        ask = [HumanMessage(TOOL_PROMPT)]
        answer = asking.invoke(ask)
        out.update(tool_calls=[{"name": c["name"], "arguments": c["args"]} for c in answer.tool_calls],
                   tool_call_ids=[c["id"] for c in answer.tool_calls],
                   tool_finish_reason=answer.response_metadata.get("finish_reason"))
        results = [ToolMessage(weather_report(c["args"]), tool_call_id=c["id"]) for c in answer.tool_calls]
        if results:
            out["final_text"] = answering.invoke(ask + [answer, *results]).content

        total = _streamed(asking, ask)
        parsed = [{"name": c["name"], "arguments": c["args"]} for c in total.tool_calls]
        assert parsed == _chunk_calls(total), f"LangChain parsed {parsed}, chunks say {_chunk_calls(total)}"
        assert not total.invalid_tool_calls, f"LangChain could not parse {total.invalid_tool_calls}"
        out.update(stream_tool_calls=parsed, stream_tool_call_ids=[c["id"] for c in total.tool_calls],
                   stream_tool_finish_reason=total.response_metadata.get("finish_reason"))
        results = [ToolMessage(weather_report(c["args"]), tool_call_id=c["id"]) for c in total.tool_calls]
        if results:
            out["stream_final_text"] = _streamed(answering, ask + [total, *results]).content
        return out

    return _record_and_check("langchain ChatOpenAI", run)


# --- the Node openai SDK ----------------------------------------------------------------------------

ROUND_TRIPS = """
import OpenAI from 'openai';

const spec = JSON.parse(process.env.ROUND_TRIP_SPEC);
const client = new OpenAI({ baseURL: spec.base_url, apiKey: spec.api_key, maxRetries: 0, timeout: spec.timeout_ms });
const { model, tool } = spec;
const create = (body) => client.chat.completions.create({ model, ...body });
const report = (args) => spec.report.replace('{city}', args.city);

async function collect(stream) {
  const out = { text: '', finish: null, usage: null, calls: [] };
  for await (const chunk of stream) {
    if (chunk.usage) out.usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta?.content) out.text += choice.delta.content;
      if (choice.finish_reason) out.finish = choice.finish_reason;
      for (const delta of choice.delta?.tool_calls ?? []) {
        const call = (out.calls[delta.index] ??= { id: '', name: '', arguments: '' });
        if (delta.id) call.id = delta.id;
        if (delta.function?.name) call.name += delta.function.name;
        if (delta.function?.arguments) call.arguments += delta.function.arguments;
      }
    }
  }
  out.calls = out.calls.filter(Boolean);
  return out;
}

function toolTurns(content, calls) {
  return [
    { role: 'assistant', content, tool_calls: calls.map((c) => (
      { id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } })) },
    ...calls.map((c) => ({ role: 'tool', tool_call_id: c.id, content: report(JSON.parse(c.arguments)) })),
  ];
}

const out = {};
try {
  const user = [{ role: 'user', content: spec.text_prompt }];
  const answer = await create({ messages: user });
  Object.assign(out, { text: answer.choices[0].message.content, finish_reason: answer.choices[0].finish_reason,
                       usage: answer.usage });

  const streamed = await collect(await create({ messages: user, stream: true,
                                                stream_options: { include_usage: true } }));
  Object.assign(out, { stream_text: streamed.text, stream_finish_reason: streamed.finish,
                       stream_usage: streamed.usage });

  const ask = [{ role: 'user', content: spec.tool_prompt }];
  const first = await create({ messages: ask, tools: [tool], tool_choice: spec.tool_choice });
  const message = first.choices[0].message;
  const calls = (message.tool_calls ?? []).map((c) => ({ id: c.id, name: c.function.name,
                                                         arguments: c.function.arguments }));
  Object.assign(out, { tool_calls: calls, tool_finish_reason: first.choices[0].finish_reason });
  if (calls.length) {
    const final = await create({ messages: [...ask, ...toolTurns(message.content ?? null, calls)], tools: [tool] });
    out.final_text = final.choices[0].message.content;
  }

  const toolStream = await collect(await create({ messages: ask, tools: [tool], tool_choice: spec.tool_choice,
                                                  stream: true }));
  Object.assign(out, { stream_tool_calls: toolStream.calls, stream_tool_finish_reason: toolStream.finish });
  if (toolStream.calls.length) {
    const final = await collect(await create({
      messages: [...ask, ...toolTurns(toolStream.text || null, toolStream.calls)], tools: [tool], stream: true }));
    out.stream_final_text = final.text;
  }
  console.log(JSON.stringify(out));
} catch (error) {
  console.log(JSON.stringify({ ...out, error: String(error), status: error?.status ?? null,
                               error_body: error?.error ?? null }));
  process.exitCode = 1;
}
"""


@functools.cache
def _node_install() -> Path:
    project = Path(tempfile.mkdtemp(prefix="shin-node-openai-"))
    atexit.register(shutil.rmtree, project, ignore_errors=True)
    (project / "package.json").write_text(json.dumps({"name": "provider-round-trips", "private": True,
                                                      "type": "module"}))
    done = subprocess.run(["npm", "install", "openai@^6", "--no-audit", "--no-fund", "--loglevel=error"],
                          cwd=project, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"npm install openai failed:\n{done.stdout}\n{done.stderr}"
    (project / "recorder.mjs").write_text(NODE_FETCH_RECORDER)
    (project / "round_trips.mjs").write_text(ROUND_TRIPS)
    return project


def node_openai_dir() -> Path:
    """A temp dir with the `openai` npm package (v6) and the round-trip script, installed once per
    pytest process; skips the calling test when node or npm is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the Node openai SDK round trips")
    return _node_install()


def run_node_round_trips(base_url: str, api_key: str, model: str, *, tool_choice="auto",
                         node_dir: Path | None = None) -> dict:
    """The six calls with the Node `openai` SDK, run by node (see the module docstring)."""
    project = node_dir or node_openai_dir()
    wire = Path(tempfile.mkstemp(prefix="wire-", suffix=".jsonl", dir=project)[1])
    spec = {"base_url": _v1(base_url), "api_key": api_key, "model": model, "tool": WEATHER_TOOL,
            "tool_choice": tool_choice, "text_prompt": TEXT_PROMPT, "tool_prompt": TOOL_PROMPT, "report": REPORT,
            "timeout_ms": int(TIMEOUT * 1000)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NODE_OPTIONS"))}
    env.update(ROUND_TRIP_SPEC=json.dumps(spec), WIRE_LOG=str(wire))
    try:
        done = subprocess.run(["node", "--import", "./recorder.mjs", "round_trips.mjs"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=NODE_TIMEOUT)
        exchanges = [json.loads(line) for line in wire.read_text().splitlines()]
    finally:
        wire.unlink(missing_ok=True)
    where = f"node exit code {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    assert done.returncode == 0, where
    for number, exchange in enumerate(exchanges, 1):
        _check_answer(f"node openai, call {number}", exchange["method"], exchange["path"], exchange["status"],
                      exchange["content_type"], exchange["body"].encode(), exchange["request_body"])
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"client": "node openai", **raw, "usage": _usage(raw.get("usage")),
              "stream_usage": _usage(raw.get("stream_usage")), "exchanges": len(exchanges)}
    for key in ("tool_calls", "stream_tool_calls"):
        calls = raw.get(key) or []
        result[key] = [_call(c["name"], c["arguments"]) for c in calls]
        result[key.replace("calls", "call_ids")] = [c["id"] for c in calls]
    return result
