"""A three-minute stream through three SIGHUP reloads (one of them a broken config), with a flow of plain
requests the whole time: the scenario of test_reload_and_stop.py.

It runs in a process of its own from the start of the test session (conftest
starts it when the test is selected), so its three minutes overlap the rest of
the suite instead of adding to it, and nothing another test does in the pytest
process (a `responses` mock of every requests call, say) can reach it; the test
then waits for it and checks what it saw, which the process writes as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .fake_upstream import FakeUpstream
from .gateway_process import ROOT, GatewayProcess

CHUNKS, GAP_MS = 1800, 100          # 180 s of stream
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def config(upstream_url: str, *extra_models: str, broken: bool = False) -> str:
    models = "".join(f"""
  - model_name: {name}
    litellm_params:
      model: openai/{name}
      api_base: {upstream_url}
      api_key: os.environ/TEST_UPSTREAM_KEY""" for name in extra_models)
    return f"""model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
  - model_name: long-stream
    litellm_params:
      model: openai/slow-{CHUNKS}-{GAP_MS}
      api_base: {upstream_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
      stream_timeout: 10{models}
litellm_settings:
  request_timeout: 300
general_settings:
  master_key: {MASTER_KEY}
""" + ("  no_such_setting: true\n" if broken else "")


class LongReload:
    """The scenario in a child process; `result()` waits for it and says what happened."""

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._outcome_path = Path(tempfile.mkdtemp(prefix="long-reload-")) / "outcome.json"

    def start(self) -> None:
        if self._process is None:
            self._process = subprocess.Popen([sys.executable, "-m", "tests.functional.long_reload",
                                              str(self._outcome_path)], cwd=ROOT)

    def result(self, timeout: float) -> dict:
        self.start()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            raise TimeoutError(f"the scenario did not end in {timeout} s") from None
        outcome = json.loads(self._outcome_path.read_text())
        if outcome.get("error"):
            raise AssertionError(f"the scenario failed: {outcome['error']}")
        return outcome


class _Scenario:
    def __init__(self):
        self.outcome: dict = {}
        self.gateway: GatewayProcess | None = None

    def _scenario(self) -> None:
        out = self.outcome
        upstream = FakeUpstream(api_key=UPSTREAM_KEY).start()
        path = Path(tempfile.mkdtemp(prefix="long-reload-")) / "config.yaml"
        path.write_text(config(upstream.base_url))
        gateway = self.gateway = GatewayProcess(path, workers=2, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
        gateway.start(timeout=60)
        flow = _Flow(gateway.url)
        stream = threading.Thread(target=self._stream, args=(gateway.url,), daemon=True)
        try:
            stream.start()
            flow.start()
            time.sleep(10)
            out["reload_1"] = _reload(gateway, config(upstream.base_url, "added-model"), "added-model")
            time.sleep(15)
            out["refused"] = _refused_reload(gateway, config(upstream.base_url, "second-model", broken=True))
            time.sleep(15)
            out["reload_2"] = _reload(gateway, config(upstream.base_url, "added-model", "third-model"),
                                      "third-model")
            stream.join(CHUNKS * GAP_MS / 1000 + 120)
            out["stream_alive_after_join"] = stream.is_alive()
        finally:
            flow.stop()
            out["flow_answered"], out["flow_failures"] = flow.answered, flow.failures
            gateway.stop()
            upstream.stop()
            out["logs"] = gateway.logs()

    def _stream(self, url: str) -> None:
        out = self.outcome
        started = time.monotonic()
        chunks, tail = 0, b""
        try:
            with requests.post(f"{url}/v1/chat/completions", headers=AUTH, stream=True, timeout=(5, 30),
                               json={"model": "long-stream", "stream": True,
                                     "messages": [{"role": "user", "content": "a long answer please"}]}) as r:
                out["stream_status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith(b"data: {"):
                        event = json.loads(line[6:])
                        if "error" in event:
                            out["stream_error"] = event
                        elif event.get("choices") and event["choices"][0]["delta"].get("content"):
                            chunks += 1
                    if line:
                        tail = line
        except requests.RequestException as exc:
            out["stream_exception"] = repr(exc)
        out["stream_chunks"], out["stream_last_line"] = chunks, tail.decode(errors="replace")
        out["stream_seconds"] = time.monotonic() - started


class _Flow:
    """Plain requests, one after another on fresh and kept-alive connections, until stopped."""

    def __init__(self, url: str):
        self._url = url
        self._stop = threading.Event()
        self.answered = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        session = requests.Session()
        body = {"model": "mock", "messages": [{"role": "user", "content": "in the flow"}]}
        while not self._stop.is_set():
            for client in (session, requests):   # a kept-alive connection, then a fresh one
                try:
                    response = client.post(f"{self._url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
                    if response.status_code == 200 and "in the flow" in response.text:
                        self.answered += 1
                    else:
                        self.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
            time.sleep(0.05)


def _models(url: str) -> set[str]:
    response = requests.get(f"{url}/v1/models", headers={**AUTH, "Connection": "close"}, timeout=10)
    return {m["id"] for m in response.json()["data"]}


def _reload(gateway: GatewayProcess, text: str, new_model: str) -> dict:
    """Reload onto `text`: how long until every worker answers with `new_model`, and whether it serves."""
    gateway.config_path.write_text(text)
    started = time.monotonic()
    gateway.reload()
    seen = 0
    while time.monotonic() - started < 30 and seen < 10:
        seen = seen + 1 if new_model in _models(gateway.url) else 0
        time.sleep(0.05)
    answer = requests.post(f"{gateway.url}/v1/chat/completions", headers=AUTH, timeout=10,
                           json={"model": new_model, "messages": [{"role": "user", "content": "new"}]})
    return {"seen_in_a_row": seen, "seconds": time.monotonic() - started, "status": answer.status_code}


def _refused_reload(gateway: GatewayProcess, text: str) -> dict:
    before = _models(gateway.url)
    gateway.config_path.write_text(text)
    gateway.reload()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and '"event":"reload_refused"' not in gateway.logs():
        time.sleep(0.1)
    time.sleep(3)     # gunicorn replaces the workers on every HUP: they must serve the last good config
    after = [_models(gateway.url) for _ in range(10)]
    return {"before": sorted(before), "after": [sorted(models) for models in after],
            "master_alive": gateway.proc.poll() is None,
            "logged": '"event":"reload_refused"' in gateway.logs()}


SCENARIO = LongReload()


def _main(outcome_path: str) -> None:
    """Run the scenario once, write what it saw; end early (stopping its gateway) if pytest goes away."""
    parent = os.getppid()
    scenario = _Scenario()
    done = threading.Event()

    def orphaned() -> None:
        while not done.wait(1.0):
            if os.getppid() != parent:
                if scenario.gateway is not None:
                    scenario.gateway.stop()
                os._exit(3)
    threading.Thread(target=orphaned, daemon=True).start()
    try:
        scenario._scenario()
    except Exception as exc:   # noqa: BLE001 - handed to the test, which fails with it
        scenario.outcome["error"] = repr(exc)
    finally:
        done.set()
        Path(outcome_path).write_text(json.dumps(scenario.outcome, default=repr))


if __name__ == "__main__":
    _main(sys.argv[1])
