"""`systemctl reload` (SIGHUP) and `systemctl stop` (SIGTERM) on the real gateway, with work in flight.

Reload: a three-minute stream and a flow of plain requests across three
reloads, one of them a broken config (long_reload.py runs it alongside the
suite). Stop: a stream in flight ends whole, queued spend rows are written,
then the master exits.
"""
from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time

import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .log_audit import audit
from .long_reload import CHUNKS, SCENARIO

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def test_a_three_minute_stream_and_a_request_flow_survive_reloads_and_a_broken_config():
    outcome = SCENARIO.result(timeout=480)
    logs = outcome["logs"]
    # the stream: whole, one piece, ended by [DONE], after about three minutes
    assert outcome.get("stream_exception") is None, outcome["stream_exception"]
    assert "stream_error" not in outcome, outcome["stream_error"]
    assert outcome["stream_status"] == 200
    assert outcome["stream_chunks"] == CHUNKS
    assert outcome["stream_last_line"] == "data: [DONE]"
    assert outcome["stream_seconds"] >= 175
    assert outcome["stream_alive_after_join"] is False
    assert "error" not in outcome
    # the flow: no request failed, before, during or after any reload
    assert outcome["flow_failures"] == [], outcome["flow_failures"][:5]
    assert outcome["flow_answered"] > 200
    # good reloads: every worker serves the new config soon after, and the new model answers
    for name in ("reload_1", "reload_2"):
        assert outcome[name]["seen_in_a_row"] == 10, outcome[name]
        assert outcome[name]["status"] == 200, outcome[name]
    # the broken one: refused, logged, and the previous config keeps serving in every worker
    refused = outcome["refused"]
    assert refused["master_alive"] and refused["logged"]
    assert "added-model" in refused["before"] and "second-model" not in refused["before"]
    assert all(models == refused["before"] for models in refused["after"]), refused
    records = [json.loads(line) for line in logs.splitlines()]
    events = [r["event"] for r in records]
    assert events.count("reload") == 2 and events.count("reload_refused") == 1
    (refusal,) = [r for r in records if r["event"] == "reload_refused"]
    assert "general_settings.no_such_setting" in refusal["message"] and refusal["level"] == "error"
    (startup,) = [r for r in records if r["event"] == "startup"]
    assert startup["graceful_timeout"] == 315      # request_timeout 300 s + 15 s
    assert audit({"the reload scenario's gateway": logs}, {MASTER_KEY, UPSTREAM_KEY}) == []


def stream_in_background(url: str, model: str) -> tuple[dict, threading.Thread]:
    """A stream read in a thread; returns once its first chunk is in. seen["lines"]: its lines, at the end."""
    seen: dict = {}
    first_chunk = threading.Event()

    def stream():
        with requests.post(f"{url}/v1/chat/completions", headers=AUTH, stream=True, timeout=(5, 30),
                           json={"model": model, "stream": True,
                                 "messages": [{"role": "user", "content": "go on"}]}) as response:
            lines = []
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    first_chunk.set()
            seen["lines"] = lines

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    assert first_chunk.wait(10)
    return seen, thread


def test_sigterm_drains_a_stream_and_writes_every_spend_row(start_gateway, upstream, tmp_path):
    gateway = start_gateway(f"""
model_list:
  - model_name: mock
    litellm_params: {{model: mock/shin-mock}}
  - model_name: slowish
    litellm_params:
      model: openai/slow-40-100
      api_base: {upstream.base_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
general_settings:
  master_key: {MASTER_KEY}
""", env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    seen, thread = stream_in_background(gateway.url, "slowish")
    for _ in range(25):     # spend rows queued in both workers, not yet written (they go in batches)
        answer = requests.post(f"{gateway.url}/v1/chat/completions", headers={**AUTH, "Connection": "close"},
                               json={"model": "mock", "messages": [{"role": "user", "content": "row"}]}, timeout=10)
        assert answer.status_code == 200
    stopped = time.monotonic()
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=30) == 0
    thread.join(10)
    assert time.monotonic() - stopped >= 2      # it waited for the stream (40 chunks 0.1 s apart)
    assert seen["lines"][-1] == b"data: [DONE]"
    assert sum(1 for line in seen["lines"] if b'"content"' in line) >= 40
    with sqlite3.connect(gateway.config_path.parent / "gateway.db") as db:
        rows = db.execute("SELECT model_group, status FROM spend_rows").fetchall()
    assert sorted(rows) == sorted([("mock", 200)] * 25 + [("slowish", 200)])
    shutdowns = [json.loads(line) for line in gateway.logs().splitlines() if '"event":"shutdown"' in line]
    assert len(shutdowns) == 2 and all(s["spend_rows_flushed"] is True for s in shutdowns)


def test_a_stop_right_after_a_reload_is_heard_at_once_and_still_drains_the_stream(start_gateway, upstream):
    """gunicorn 25+ would handle no signal until the reload's old workers had drained (server.py)."""
    gateway = start_gateway(f"""
model_list:
  - model_name: streamer
    litellm_params:
      model: openai/slow-150-100
      api_base: {upstream.base_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
general_settings:
  master_key: {MASTER_KEY}
""", env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    seen, thread = stream_in_background(gateway.url, "streamer")
    gateway.reload()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and gateway.logs().count('"event":"shutdown"') < 1:
        time.sleep(0.1)     # the idle old worker is gone: the reload is done, the streaming one drains
    stopped = time.monotonic()
    gateway.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5      # the stream has about 12 s left: the bug would wait that long
    while time.monotonic() < deadline and '"message":"Handling signal: term"' not in gateway.logs():
        time.sleep(0.05)
    assert '"message":"Handling signal: term"' in gateway.logs(), "the master did not hear the stop"
    assert time.monotonic() - stopped < 5
    assert gateway.proc.wait(timeout=30) == 0
    thread.join(10)
    assert seen["lines"][-1] == b"data: [DONE]"
    assert sum(1 for line in seen["lines"] if b'"content"' in line) >= 150
