"""The `shin-gateway` CLI, the raw gunicorn form, config validation and SIGHUP reloads, as real processes."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from .gateway_process import ROOT, free_port

VENV_BIN = Path(sys.executable).parent
SHIN_GATEWAY = str(VENV_BIN / "shin-gateway")
UPSTREAM_KEY = "upstream-secret-key-123"

GOOD = """\
model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
router_settings:
  num_retries: 1
"""

UNKNOWN_KEY = """\
model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
      api_bsae: http://127.0.0.1:9/v1
"""

WRONG_TYPE = """\
model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
router_settings:
  num_retries: lots
"""

# Valid YAML and schema, but `hosted_vllm` has no default api_base: check-config rejects it.
NEEDS_API_BASE = """\
model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
  - model_name: local-vllm
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
"""

BAD_YAML = """\
model_list:
  - model_name: mock
    litellm_params: {model: mock/shin-mock
router_settings:
  num_retries: 1
"""


def clean_env(**extra) -> dict:
    """The test runner's environment without anything that would change which config is read."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SHIN_GATEWAY_") and k not in ("LITELLM_MASTER_KEY",)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def check_config(path: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SHIN_GATEWAY, "check-config", "--config", str(path), *flags], cwd=ROOT,
                          env=clean_env(**(env or {})), capture_output=True, text=True, timeout=30)


def get(url: str, **kwargs) -> requests.Response:
    """GET with `Connection: close`: gevent's pywsgi handler keeps an idle keep-alive connection open with
    no timeout, and gunicorn's graceful stop waits for it, so a lingering client slows every teardown."""
    kwargs.setdefault("timeout", 5)
    return requests.get(url, headers={"Connection": "close", **kwargs.pop("headers", {})}, **kwargs)


def post(url: str, **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 10)
    return requests.post(url, headers={"Connection": "close", **kwargs.pop("headers", {})}, **kwargs)


def poll(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def model_ids(url: str) -> set[str]:
    response = get(f"{url}/v1/models")
    assert response.status_code == 200, response.text
    return {model["id"] for model in response.json()["data"]}


# --- check-config ------------------------------------------------------------------------------

def test_check_config_unknown_key(tmp_path):
    result = check_config(write(tmp_path, UNKNOWN_KEY))
    assert result.returncode != 0
    assert "line 5" in result.stderr and "model_list.0.litellm_params.api_bsae" in result.stderr, result.stderr
    assert "unknown key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_wrong_type(tmp_path):
    result = check_config(write(tmp_path, WRONG_TYPE))
    assert result.returncode != 0
    assert "line 6" in result.stderr and "router_settings.num_retries" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_yaml_syntax_error(tmp_path):
    result = check_config(write(tmp_path, BAD_YAML))
    assert result.returncode != 0
    # the flow mapping opened on line 3 is found unclosed on line 4
    assert re.search(r"config\.yaml:[34]: invalid YAML", result.stderr), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_provider_without_default_base_needs_api_base(tmp_path):
    result = check_config(write(tmp_path, NEEDS_API_BASE))
    assert result.returncode != 0
    assert "api_base" in result.stderr and "line 5" in result.stderr, result.stderr


def test_check_config_missing_file(tmp_path):
    result = check_config(tmp_path / "nope.yaml")
    assert result.returncode != 0
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_check_config_good_file(tmp_path):
    result = check_config(write(tmp_path, GOOD))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "mock" in result.stdout


def test_the_shipped_config_passes_check_config():
    result = check_config(ROOT / "config" / "config.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_reads_shin_gateway_config(tmp_path):
    path = write(tmp_path, WRONG_TYPE)
    result = subprocess.run([SHIN_GATEWAY, "check-config"], cwd=tmp_path,
                            env=clean_env(SHIN_GATEWAY_CONFIG=str(path)), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0 and "router_settings.num_retries" in result.stderr


# --- the raw gunicorn form with a bad config -------------------------------------------------------

def run_raw_gunicorn(tmp_path, config_text: str, host: str = "127.0.0.1", env: dict | None = None) -> tuple[int, str]:
    """`gunicorn -c config/gunicorn.conf.py wsgi:app` on a config; it must exit by itself."""
    path = write(tmp_path, config_text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py",
         "--bind", f"{host}:{free_port()}", "--workers", "1", "wsgi:app"],
        cwd=ROOT, env=clean_env(SHIN_GATEWAY_CONFIG=str(path), **(env or {})), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("gunicorn kept running on an invalid config")
    return proc.returncode, output


def test_raw_gunicorn_with_an_invalid_config_exits_quickly_with_the_message(tmp_path):
    returncode, output = run_raw_gunicorn(tmp_path, UNKNOWN_KEY)
    assert returncode != 0
    assert "model_list.0.litellm_params.api_bsae" in output and "line 5" in output, output
    assert "Traceback" not in output


def test_raw_gunicorn_refuses_what_check_config_refuses_with_the_message(tmp_path):
    """The master must validate what check-config validates, not let every worker crash on it."""
    returncode, output = run_raw_gunicorn(tmp_path, NEEDS_API_BASE)
    assert returncode != 0
    assert "api_base" in output and "line 5" in output, output
    assert "Traceback" not in output, output
    assert "Booting worker" not in output, "the master forked workers on a config it should have refused"


# --- the CLI serving ---------------------------------------------------------------------------------

class CliGateway:
    """`shin-gateway --config … --port …` as a subprocess (it execs into the gunicorn master)."""

    def __init__(self, tmp_path: Path, config: Path, env: dict, args: tuple = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"cli-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [SHIN_GATEWAY, "--config", str(config), "--port", str(self.port), *args],
            cwd=tmp_path, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        # Connection: close, so a probe that timed out while the workers booted leaves no idle
        # keep-alive connection behind (it would hold a worker through its graceful stop).
        try:
            return get(f"{self.url}/health/liveliness", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """SIGTERM to the master only (as systemd's KillMode=mixed does), then SIGKILL what is left.

        A worker that gets SIGTERM between fork and installing its own handlers ignores it (gunicorn
        race), so the wait is short: teardown speed is not what these tests check.
        """
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()


@pytest.fixture
def run_cli(tmp_path):
    started = []

    def run(config_text: str, env: dict | None = None, args: tuple = ()) -> CliGateway:
        gateway = CliGateway(tmp_path, write(tmp_path, config_text, f"cli-{len(started)}.yaml"),
                             clean_env(**(env or {})), args)
        started.append(gateway)
        return gateway

    yield run
    for gateway in started:
        gateway.stop()


def listening_address(gateway: CliGateway) -> str | None:
    match = re.search(r"Listening at: http://([0-9.]+):(\d+)", gateway.logs())
    return f"{match.group(1)}:{match.group(2)}" if match else None


def test_cli_serves_liveliness_within_5_seconds(run_cli):
    gateway = run_cli(GOOD)
    started = time.monotonic()
    assert poll(gateway.alive, timeout=5, interval=0.05), gateway.logs()
    assert time.monotonic() - started < 5
    response = get(f"{gateway.url}/health/liveliness")
    assert response.json() == {"status": "alive"}


def test_cli_without_a_master_key_binds_loopback_only_and_warns(run_cli):
    gateway = run_cli(GOOD)
    assert poll(gateway.alive, timeout=10), gateway.logs()
    assert listening_address(gateway) == f"127.0.0.1:{gateway.port}", gateway.logs()
    assert "serving without authentication" in gateway.logs()
    # no CORS for a keyless gateway unless the config asks for it: no page in a browser may call it
    answer = get(f"{gateway.url}/v1/models", headers={"Origin": "https://evil.example"})
    assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer.headers


# --- keyless by accident: a master key the environment lacks never means "no key" ---------------

KEYED = GOOD + "general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n"


@pytest.mark.parametrize("env", [{}, {"LITELLM_MASTER_KEY": ""}], ids=["unset", "empty"])
def test_cli_refuses_to_start_when_the_master_key_variable_is_unset_or_empty(run_cli, env):
    gateway = run_cli(KEYED, env=env)
    try:
        gateway.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway started without the master key its config names:\n" + gateway.logs())
    assert gateway.proc.returncode != 0
    logs = gateway.logs()
    assert "general_settings.master_key: environment variable LITELLM_MASTER_KEY is not set" in logs, logs
    assert "Booting worker" not in logs and "Traceback" not in logs
    assert not gateway.alive()


@pytest.mark.parametrize("env", [{}, {"LITELLM_MASTER_KEY": ""}], ids=["unset", "empty"])
def test_check_config_fails_when_the_master_key_variable_is_unset_or_empty(tmp_path, env):
    result = check_config(write(tmp_path, KEYED), env=env)
    assert result.returncode == 1, result
    assert "environment variable LITELLM_MASTER_KEY is not set or empty" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("env", [{}, {"LITELLM_MASTER_KEY": ""}], ids=["unset", "empty"])
def test_raw_gunicorn_refuses_to_start_when_the_master_key_variable_is_unset_or_empty(tmp_path, env):
    returncode, output = run_raw_gunicorn(tmp_path, KEYED, env=env)
    assert returncode != 0
    assert "environment variable LITELLM_MASTER_KEY is not set or empty" in output, output
    assert "Booting worker" not in output


def test_check_config_names_the_variable_never_a_value(tmp_path):
    text = KEYED.replace("master_key: os.environ/LITELLM_MASTER_KEY",
                         "master_key: os.environ/LITELLM_MASTER_KEY\n  metrics_token: os.environ/GW_METRICS")
    result = check_config(write(tmp_path, text), env={"LITELLM_MASTER_KEY": "sk-secret-value-0123"})
    assert result.returncode == 1
    assert "GW_METRICS" in result.stderr and "sk-secret-value-0123" not in result.stderr + result.stdout


def test_check_config_require_master_key(tmp_path):
    """What the systemd unit runs before starting: a config without a master key is refused there."""
    refused = check_config(write(tmp_path, GOOD), "--require-master-key")
    assert refused.returncode == 1 and "master_key is not set" in refused.stderr
    accepted = check_config(write(tmp_path, KEYED), "--require-master-key",
                            env={"LITELLM_MASTER_KEY": "sk-cli-master-0123456789"})
    assert accepted.returncode == 0, accepted.stderr


def test_a_keyless_gateway_refuses_a_non_loopback_bind(run_cli, tmp_path):
    gateway = run_cli(GOOD, args=("--host", "0.0.0.0"))
    try:
        gateway.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("a keyless gateway served on every interface:\n" + gateway.logs())
    assert gateway.proc.returncode != 0
    assert "refusing to serve without a master_key on 0.0.0.0" in gateway.logs()
    returncode, output = run_raw_gunicorn(tmp_path, GOOD, host="0.0.0.0")
    assert returncode != 0 and "refusing to serve without a master_key" in output, output


def test_cli_with_a_master_key_binds_every_interface(run_cli):
    gateway = run_cli(GOOD + "general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n",
                      env={"LITELLM_MASTER_KEY": "sk-cli-master-0123456789"})
    assert poll(gateway.alive, timeout=10), gateway.logs()
    assert listening_address(gateway) == f"0.0.0.0:{gateway.port}", gateway.logs()
    assert "sk-cli-master-0123456789" not in gateway.logs()
    denied = get(f"{gateway.url}/v1/models")
    assert denied.status_code == 401
    allowed = get(f"{gateway.url}/v1/models", headers={"Authorization": "Bearer sk-cli-master-0123456789"})
    assert allowed.status_code == 200


def test_cli_with_an_invalid_config_exits_non_zero_with_the_message(run_cli):
    gateway = run_cli(WRONG_TYPE)
    try:
        gateway.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the CLI kept running on an invalid config")
    assert gateway.proc.returncode != 0
    logs = gateway.logs()
    assert "router_settings.num_retries" in logs and "line 6" in logs, logs
    assert "Traceback" not in logs


# --- SIGHUP reloads --------------------------------------------------------------------------------

def reload_config(upstream_url: str, *extra_models: str) -> str:
    models = "".join(f"""
  - model_name: {name}
    litellm_params:
      model: openai/{name}
      api_base: {upstream_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
""" for name in extra_models)
    return f"""\
model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
  - model_name: slow-stream
    litellm_params:
      model: openai/slow-20-100
      api_base: {upstream_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
      stream_timeout: 10
{models}"""


def workers_replaced(gateway, old: set[int], count: int = 2):
    """A poll predicate: the master's children are `count` workers, none of them from `old`."""
    def check():
        current = set(gateway.worker_pids())
        return current if len(current) == count and not current & old else None
    return check


def test_sighup_reload_adds_a_model_and_refuses_an_invalid_config(start_gateway, upstream):
    gateway = start_gateway(reload_config(upstream.base_url), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    assert model_ids(gateway.url) == {"mock", "slow-stream"}
    assert get(f"{gateway.url}/health/readiness").status_code == 200

    workers = set(gateway.worker_pids())
    gateway.config_path.write_text(reload_config(upstream.base_url, "added-model"))
    gateway.reload()
    assert poll(lambda: "added-model" in model_ids(gateway.url), timeout=10), gateway.logs()
    workers = poll(workers_replaced(gateway, workers), timeout=10)
    assert workers, gateway.logs()
    # every worker has the new config, not just the first one to answer
    for _ in range(10):
        assert model_ids(gateway.url) == {"mock", "slow-stream", "added-model"}

    gateway.config_path.write_text(reload_config(upstream.base_url, "second-model")
                                  + "general_settings:\n  bogus_key: 1\n")
    gateway.reload()
    assert poll(lambda: "reload refused" in gateway.logs(), timeout=10), gateway.logs()
    # gunicorn replaces the workers on every HUP: the new ones must serve the last good config
    assert poll(workers_replaced(gateway, workers), timeout=10), gateway.logs()
    assert gateway.proc.poll() is None, "the gunicorn master died on an invalid reload"
    for _ in range(10):
        assert model_ids(gateway.url) == {"mock", "slow-stream", "added-model"}
    chat = post(f"{gateway.url}/v1/chat/completions",
                json={"model": "mock", "messages": [{"role": "user", "content": "still here"}]})
    assert chat.status_code == 200 and "still here" in chat.text
    assert get(f"{gateway.url}/health/readiness").status_code == 200
    assert "general_settings.bogus_key" in gateway.logs()

    gateway.config_path.write_text(reload_config(upstream.base_url, "added-model", "second-model"))
    gateway.reload()
    assert poll(lambda: "second-model" in model_ids(gateway.url), timeout=10), gateway.logs()
    assert gateway.proc.poll() is None


def test_a_stream_in_flight_survives_a_good_reload(start_gateway, upstream):
    gateway = start_gateway(reload_config(upstream.base_url), workers=1, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    old_workers = set(gateway.worker_pids())
    first_bytes = threading.Event()
    result: dict = {}

    def stream():
        try:
            with post(f"{gateway.url}/v1/chat/completions", stream=True, timeout=(5, 15),
                      json={"model": "slow-stream", "stream": True,
                            "messages": [{"role": "user", "content": "slowly"}]}) as response:
                result["status"] = response.status_code
                lines = []
                for line in response.iter_lines():
                    if line:
                        lines.append(line)
                        first_bytes.set()
                result["lines"] = lines
        except Exception as exc:  # reported by the main thread
            result["error"] = repr(exc)
        finally:
            result["ended"] = time.monotonic()
            first_bytes.set()

    client = threading.Thread(target=stream, daemon=True)
    client.start()
    assert first_bytes.wait(10)
    assert "error" not in result and "ended" not in result, result

    gateway.config_path.write_text(reload_config(upstream.base_url, "added-during-stream"))
    reloaded_at = time.monotonic()
    gateway.reload()
    # the new worker is up while the old one still streams
    assert poll(lambda: set(gateway.worker_pids()) - old_workers, timeout=10), gateway.logs()
    assert "ended" not in result, "the stream ended before the new worker was up: the test proves nothing"

    client.join(20)
    assert not client.is_alive(), "the stream did not finish"
    assert "error" not in result, result
    assert result["status"] == 200
    lines = result["lines"]
    assert lines[-1] == b"data: [DONE]", lines[-3:]
    text = b"".join(lines)
    assert all(f"tok{i} ".encode() in text for i in range(20)), text
    assert result["ended"] > reloaded_at
    assert poll(workers_replaced(gateway, old_workers, count=1), timeout=10)
    assert gateway.proc.poll() is None
    assert "added-during-stream" in model_ids(gateway.url), "the reload did not take effect"


def test_sighup_refuses_a_config_check_config_rejects(start_gateway, upstream):
    """Schema-valid but unservable (no api_base for hosted_vllm): the reload must be refused, not
    hand the config to new workers that all fail to boot and take the master down with them."""
    gateway = start_gateway(reload_config(upstream.base_url), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    workers = set(gateway.worker_pids())
    gateway.config_path.write_text(reload_config(upstream.base_url)
                                   + "  - model_name: local-vllm\n    litellm_params:\n"
                                     "      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct\n")
    gateway.reload()
    poll(lambda: gateway.proc.poll() is not None or workers_replaced(gateway, workers)(), timeout=10)
    assert gateway.proc.poll() is None, f"the gateway died on a refused reload:\n{gateway.logs()[-3000:]}"
    assert poll(lambda: "reload refused" in gateway.logs(), timeout=5), gateway.logs()[-3000:]
    for _ in range(6):
        assert model_ids(gateway.url) == {"mock", "slow-stream"}


def test_a_kept_alive_client_gets_the_new_config_after_a_reload(start_gateway, upstream):
    """SDKs and nginx reuse connections: after SIGHUP an old worker may answer one more request on a
    kept-alive connection (and close it), but must not go on serving the old config on it."""
    gateway = start_gateway(reload_config(upstream.base_url), workers=1, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    session = requests.Session()
    try:
        assert {m["id"] for m in session.get(f"{gateway.url}/v1/models", timeout=5).json()["data"]} == \
            {"mock", "slow-stream"}
        gateway.config_path.write_text(reload_config(upstream.base_url, "added-model"))
        gateway.reload()
        assert poll(lambda: "added-model" in model_ids(gateway.url), timeout=10), gateway.logs()
        seen = [{m["id"] for m in session.get(f"{gateway.url}/v1/models", timeout=5).json()["data"]}
                for _ in range(3)]
        assert "added-model" in seen[1] and "added-model" in seen[2], (
            f"a kept-alive connection is still served the old config after the reload: {seen}")
    finally:
        session.close()


def test_no_request_is_dropped_while_workers_are_replaced(start_gateway, upstream):
    """Clients opening fresh connections during SIGHUP reloads must all be answered: a stopping worker
    may stop accepting, but must not close a connection whose first request it has not read yet."""
    gateway = start_gateway(reload_config(upstream.base_url), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]

    def client():
        body = {"model": "mock", "messages": [{"role": "user", "content": "during reload"}]}
        while not stop.is_set():
            try:
                response = post(f"{gateway.url}/v1/chat/completions", json=body)
                if response.status_code == 200:
                    answered[0] += 1
                else:
                    failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
            except requests.RequestException as exc:
                failures.append(repr(exc))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        for _ in range(3):
            workers = set(gateway.worker_pids())
            gateway.reload()
            assert poll(workers_replaced(gateway, workers), timeout=10), gateway.logs()[-3000:]
            time.sleep(0.3)  # let the clients run against the new workers too
    finally:
        stop.set()
        for thread in clients:
            thread.join(10)
    assert answered[0] > 20
    assert failures == [], f"{len(failures)} of {len(failures) + answered[0]} requests failed: {failures[:5]}"
