"""Fixtures: a fake OpenAI-compatible upstream and the real gateway in front of it."""
from __future__ import annotations

import textwrap

import pytest

from .fake_upstream import FakeUpstream
from .gateway_process import GatewayProcess, free_port
from .log_audit import audit, secrets_of

MASTER_KEY = "sk-test-master-key-0123456789"
UPSTREAM_KEY = "upstream-secret-key-123"

# Client-facing name → upstream model name at the fake upstream (which picks its behaviour by it).
STANDARD_MODELS = {
    "shin-llama-3-1-70b": "meta-llama/Llama-3.1-70B-Instruct",
    "shin-llama-3-1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "shin-llama-3-1-405b": "meta-llama/Llama-3.1-405B-Instruct",
    "otsu-qwen3-coder-plus": "qwen3-coder-plus",
    "text-embedding-3-small": "text-embedding-3-small",
    "fail-500": "status-500",
    "fail-503": "status-503",
    "fail-429": "status-429",
    "fail-401": "status-401",
    "fail-403": "status-403",
    "fail-400": "status-400",
    "fail-404": "status-404",
    "fail-422": "status-422",
    "fail-context": "status-400-context",
    "garbage": "garbage",
    "stream-error": "stream-error-3",
    "stream-cut": "stream-cut-3",
    "fixture-text": "fixture-text-usage",
    "fixture-tools": "fixture-parallel-tool-calls-usage",
    "fixture-n3": "fixture-n3-usage",
    "fixture-logprobs": "fixture-logprobs-usage",
    "fixture-refusal": "fixture-refusal-usage",
    "fixture-length": "fixture-length-usage",
    "fixture-tool-call": "fixture-tool-call-usage",
    "slow-stream": "slow-40-50",
    "very-slow-stream": "slow-20-3000",
}


def standard_config(upstream: FakeUpstream) -> str:
    entries = []
    for name, upstream_model in STANDARD_MODELS.items():
        entries.append(f"""
          - model_name: {name}
            litellm_params:
              model: openai/{upstream_model}
              api_base: {upstream.base_url}
              api_key: os.environ/TEST_UPSTREAM_KEY
              stream_timeout: 10""")
    entries.append(f"""
          - model_name: slow-answer
            litellm_params:
              model: openai/hang-3
              api_base: {upstream.base_url}
              api_key: os.environ/TEST_UPSTREAM_KEY
              timeout: 1""")
    entries.append(f"""
          - model_name: stream-stall
            litellm_params:
              model: openai/stream-stall-3
              api_base: {upstream.base_url}
              api_key: os.environ/TEST_UPSTREAM_KEY
              stream_timeout: 1""")
    entries.append(f"""
          - model_name: unreachable
            litellm_params:
              model: openai/anything
              api_base: http://127.0.0.1:{free_port()}/v1
              api_key: os.environ/TEST_UPSTREAM_KEY""")
    entries.append("""
          - model_name: mock
            litellm_params:
              model: mock/shin-mock""")
    return textwrap.dedent("model_list:" + "".join(entries)) + textwrap.dedent(f"""
        router_settings:
          num_retries: 1
          cooldown_time: 0      # each test sees its own failures; cooldowns: test_router*.py
        general_settings:
          master_key: {MASTER_KEY}
          max_request_body_mb: 1
        """)


def quiet_config(base_url: str, models: dict[str, str], *, stream_timeout: float | None = None,
                 max_request_body_mb: float | None = None) -> str:
    """Fake-upstream models (client name → upstream model) and `mock`, with no retries and no
    cooldowns, so that a test counts exactly the requests it sent."""
    extra = f"\n      stream_timeout: {stream_timeout}" if stream_timeout else ""
    entries = "".join(f"""
  - model_name: {name}
    litellm_params:
      model: openai/{target}
      api_base: {base_url}
      api_key: os.environ/TEST_UPSTREAM_KEY{extra}""" for name, target in models.items())
    limit = f"\n  max_request_body_mb: {max_request_body_mb}" if max_request_body_mb else ""
    return f"""model_list:{entries}
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
router_settings:
  num_retries: 0
  cooldown_time: 0
general_settings:
  master_key: {MASTER_KEY}{limit}
"""


@pytest.fixture(scope="session", autouse=True)
def every_log_is_clean():
    """After the session: every log of every gateway it started holds no secret, and every line is JSON.

    Runs over whatever the session ran (the whole functional suite in CI), so
    every code path the tests drive, failures and stack traces included, is audited.
    """
    yield
    logs, secrets = {}, {UPSTREAM_KEY, MASTER_KEY}
    for process in GatewayProcess.started:
        logs[str(process.log_path)] = process.logs()
        try:
            config_text = process.config_path.read_text()
        except OSError:
            config_text = ""
        secrets |= secrets_of(config_text, process.extra_env)
    findings = audit(logs, secrets)
    assert not findings, "\n".join(f"{f.log}:{f.line}: {f.what}" for f in findings[:50])


@pytest.fixture(scope="session")
def upstream():
    server = FakeUpstream(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(upstream, tmp_path_factory):
    """The shared gateway: 2 gevent workers in front of the fake upstream."""
    path = tmp_path_factory.mktemp("gateway") / "config.yaml"
    path.write_text(standard_config(upstream))
    process = GatewayProcess(path, workers=2, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}).start()
    yield process
    process.stop()


@pytest.fixture
def start_gateway(tmp_path):
    """Start a gateway on a config of the test's own: start_gateway(yaml_text, workers=2, env=None)."""
    started = []

    def start(config_text: str, *, workers: int = 2, env: dict | None = None) -> GatewayProcess:
        path = tmp_path / f"config-{len(started)}.yaml"
        path.write_text(textwrap.dedent(config_text))
        process = GatewayProcess(path, workers=workers, env=env)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def auth_headers():
    return {"Authorization": f"Bearer {MASTER_KEY}"}


def pytest_collection_finish(session):
    """The long reload scenario runs from the start of the session, alongside the other tests."""
    if any(item.name == "test_a_three_minute_stream_and_a_request_flow_survive_reloads_and_a_broken_config"
           for item in session.items):
        from .long_reload import SCENARIO
        SCENARIO.start()
