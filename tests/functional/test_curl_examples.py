"""Every ```bash curl example of docs/api-integration-guide.md, run with the real curl binary.

Only the host (`http://localhost:4000` → the test gateway) and the placeholder key are
rewritten. The test adds its own instrumentation flags after the example's arguments
(`-sS --max-time`, `-D <file>` to read the status and Content-Type), which change nothing
that is sent. Each answer must be HTTP 200 and valid against OpenAI's OpenAPI spec.

The streaming example is also run with `curl -N` and ONLY its model changed to
`slow-stream` (the fake upstream sends 40 chunks 50 ms apart), to show chunks reach the
client as they are produced, not buffered until the end.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
import time

import pytest

from .conftest import MASTER_KEY, STANDARD_MODELS
from .guide_doc import GUIDE, blocks, for_gateway
from .openapi_schemas import check_exchange

CURL_TIMEOUT = 20
STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4 "
SLOW_CHUNKS, SLOW_GAP = 40, 0.05       # slow-stream = upstream model slow-40-50
MARGIN = 0.5

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the curl binary is not installed")

CURL_BLOCKS = [b for b in blocks("bash") if b.code.lstrip().startswith("curl ")]


def curl_argv(code: str, gateway_url: str) -> list[str]:
    argv = shlex.split(for_gateway(code, gateway_url, MASTER_KEY).replace("\\\n", " "))
    assert argv[0] == "curl", argv
    return argv


def data_of(argv: list[str]) -> dict:
    """The JSON body the example sends with -d."""
    for flag in ("-d", "--data", "--data-raw"):
        if flag in argv:
            return json.loads(argv[argv.index(flag) + 1])
    raise AssertionError(f"no -d body in {argv}")


def with_model(argv: list[str], model: str) -> list[str]:
    argv = list(argv)
    index = argv.index("-d") + 1
    body = data_of(argv)
    body["model"] = model
    argv[index] = json.dumps(body)
    return argv


def read_head(path) -> tuple[int, str]:
    """Status and Content-Type of the last response in a `curl -D` header dump."""
    status, content_type = 0, ""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("HTTP/"):
            status, content_type = int(line.split()[1]), ""
        elif line.lower().startswith("content-type:"):
            content_type = line.split(":", 1)[1].strip()
    return status, content_type


def test_guide_has_curl_examples():
    ids = [b.id for b in CURL_BLOCKS]
    assert "curl-examples/basic-chat-completion" in ids and "curl-examples/streaming-response" in ids, ids


@pytest.mark.parametrize("block", CURL_BLOCKS, ids=[b.id for b in CURL_BLOCKS])
def test_curl_example(block, gateway, upstream, tmp_path):
    argv = curl_argv(block.code, gateway.url)
    sent = data_of(argv)
    head = tmp_path / "headers.txt"
    started = time.monotonic()
    done = subprocess.run(argv + ["-sS", "--max-time", str(CURL_TIMEOUT), "-D", str(head)],
                          capture_output=True, timeout=CURL_TIMEOUT + 5)
    where = f"{GUIDE.name} line {block.line}: {argv}\nstderr: {done.stderr.decode()}"
    assert done.returncode == 0, where
    status, content_type = read_head(head)
    assert status == 200, f"HTTP {status}: {done.stdout[:500]!r}\n{where}"

    result = check_exchange("POST", argv[1].split(gateway.url, 1)[1], status, content_type, done.stdout, sent)
    if sent.get("stream"):
        assert content_type.startswith("text/event-stream"), content_type
        events = result["events"]
        assert events[-1] == "[DONE]" and done.stdout.endswith(b"data: [DONE]\n\n")
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1] if c["choices"])
        assert text == STREAM_TEXT
    else:
        assert content_type.split(";")[0] == "application/json", content_type
        last_user = [m for m in sent["messages"] if m["role"] == "user"][-1]["content"]
        assert result["json"]["choices"][0]["message"]["content"] == f"echo: {last_user}"
        assert result["json"]["model"] == sent["model"]

    # What the example sends reaches the upstream unchanged (model aside; a stream also asks for its usage).
    with upstream.lock:
        seen = [r for r in upstream.requests
                if r["at"] >= started and (r["body"] or {}).get("model") == STANDARD_MODELS[sent["model"]]]
    assert len(seen) == 1, seen
    forwarded = seen[0]["body"]
    expected = {k: v for k, v in sent.items() if k != "model"}
    if sent.get("stream"):
        expected["stream_options"] = {**(sent.get("stream_options") or {}), "include_usage": True}
    assert {k: v for k, v in forwarded.items() if k != "model"} == expected


STREAM_BLOCK = next((b for b in CURL_BLOCKS if data_of(curl_argv(b.code, "http://x")).get("stream")), None)


@pytest.mark.skipif(STREAM_BLOCK is None, reason="the guide has no streaming curl example")
def test_curl_streaming_example_is_not_buffered(gateway):
    """The guide's streaming example with `curl -N`, model changed to slow-stream (40 chunks, 50 ms apart):
    the first `data:` line must reach curl's stdout well before the last one."""
    argv = with_model(curl_argv(STREAM_BLOCK.code, gateway.url), "slow-stream")
    argv = [argv[0], "-N"] + argv[1:] + ["-sS", "--max-time", str(CURL_TIMEOUT)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    watchdog = threading.Timer(CURL_TIMEOUT + 5, proc.kill)
    watchdog.start()
    started = time.monotonic()
    arrivals, raw = [], b""
    try:
        for line in iter(proc.stdout.readline, b""):
            raw += line
            if line.startswith(b"data:"):
                arrivals.append((time.monotonic() - started, line.rstrip(b"\n")))
        proc.wait(timeout=5)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()

    assert arrivals, raw[:500]
    assert arrivals[-1][1] == b"data: [DONE]"
    assert raw.endswith(b"data: [DONE]\n\n")
    events = check_exchange("POST", "/v1/chat/completions", 200, "text/event-stream", raw,
                            {"stream": True})["events"]
    contents = [c["choices"][0]["delta"].get("content") for c in events[:-1] if c["choices"]]
    assert "".join(c or "" for c in contents) == "".join(f"tok{i} " for i in range(SLOW_CHUNKS))

    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first >= (SLOW_CHUNKS - 1) * SLOW_GAP * 0.8, arrivals   # the upstream's pace, not a burst
    assert first < last - MARGIN, f"first chunk at {first:.2f}s, last at {last:.2f}s: the stream was buffered"
