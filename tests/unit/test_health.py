"""gateway/health.py: probes through the real adapters against a real loopback upstream, the report's shape,
no credential in it, budgets, and the background loop over the real shared state."""
from __future__ import annotations

import logging
import time

import gevent
import orjson
import pytest

from gateway.errors import GatewayError, UpstreamAuthFailed, UpstreamTimeout
from gateway.health import UNEXPECTED, HealthChecker, probe_request, probe_timeout, public_base
from gateway.providers.mock import MockAdapter
from gateway.providers.openai_compat import OpenAICompatibleAdapter
from gateway.redact import Redactor
from gateway.routing import Router
from gateway.store.shared_memory import SharedMemoryState
from gateway.types import Deployment, RouterSettings
from tests.functional.fake_upstream import FakeUpstream
from tests.functional.gateway_process import free_port

UPSTREAM_KEY = "upstream-secret-key-123"
WRONG_KEY = "wrong-upstream-key-456"
HEADER_SECRET = "header-secret-value-789"
URL_USER = "urluser-abc"
URL_PASSWORD = "urlpass-s3cret-xyz"
SECRETS = (UPSTREAM_KEY, WRONG_KEY, HEADER_SECRET, URL_USER, URL_PASSWORD)
LOG = logging.getLogger("gateway.test_health")


@pytest.fixture(scope="module")
def upstream():
    server = FakeUpstream(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def state():
    state = SharedMemoryState.private()
    yield state
    state.close()


def dep(id: str, upstream_model: str = "meta-llama/Llama-3.1-8B-Instruct", *, base: str | None = None,
        provider: str = "openai", **kw) -> Deployment:
    fields = dict(id=id, model_name=f"group-{id}", provider=provider, upstream_model=upstream_model,
                  api_base=base, api_key=UPSTREAM_KEY, timeout=20.0)
    fields.update(kw)
    return Deployment(**fields)


class Results(list):
    """on_result: what the checker told the router, in order."""

    def __call__(self, deployment: Deployment, error: GatewayError | None) -> None:
        self.append((deployment.id, error))

    def by_id(self) -> dict:
        return dict(self)


def checker(deployments, state, on_result=None, **kw) -> tuple[HealthChecker, Results]:
    results = Results()
    secrets = [s for d in deployments for s in (d.api_key, *d.extra_headers.values()) if s]
    redactor = Redactor(secrets + [URL_PASSWORD])
    adapters = {"openai": OpenAICompatibleAdapter([d for d in deployments if d.provider == "openai"],
                                                  pool_maxsize=8, redactor=redactor),
                "mock": MockAdapter([])}
    return HealthChecker(deployments, adapters, state, on_result or results, LOG, redactor=redactor, **kw), results


def assert_no_secret(body: dict) -> None:
    text = orjson.dumps(body).decode()
    for secret in SECRETS:
        assert secret not in text, f"/health body carries {secret!r}: {text}"
    assert "Traceback" not in text and 'File "' not in text, text


def ids(entries) -> list[str]:
    return [entry["model_id"] for entry in entries]


# --- the cheapest call per mode, budgets, bases -------------------------------------------------

def test_the_probe_is_one_token_of_chat_by_default():
    request = probe_request(dep("a"))
    assert request.endpoint == "chat/completions" and request.model == "group-a" and not request.stream
    assert request.params == {"model": "group-a", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    assert request.extra == {}


def test_completion_and_embedding_modes_probe_their_own_endpoints():
    completion = probe_request(dep("c", mode="completion"))
    assert completion.endpoint == "completions"
    assert completion.params == {"model": "group-c", "prompt": "ping", "max_tokens": 1}
    embedding = probe_request(dep("e", mode="embedding"))
    assert embedding.endpoint == "embeddings"
    assert embedding.params == {"model": "group-e", "input": "ping"}


@pytest.mark.parametrize("timeout, health_check_timeout, expected", [
    (600.0, None, 30.0), (10.0, None, 10.0), (600.0, 2.0, 2.0), (1.0, 5.0, 5.0)])
def test_the_probe_budget(timeout, health_check_timeout, expected):
    assert probe_timeout(dep("a", timeout=timeout, health_check_timeout=health_check_timeout)) == expected


@pytest.mark.parametrize("base, shown", [
    (None, None),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    (f"https://{URL_USER}:{URL_PASSWORD}@api.example.com/v1", "https://api.example.com/v1"),
    (f"https://{URL_PASSWORD}@api.example.com:8443/v1", "https://api.example.com:8443/v1"),
    (f"https://api.example.com/v1?api-key={URL_PASSWORD}#frag", "https://api.example.com/v1"),
    (f"http://{URL_USER}:{URL_PASSWORD}@[::1]:9000/v1", "http://[::1]:9000/v1"),
])
def test_a_shown_base_has_no_user_info_query_or_fragment(base, shown):
    assert public_base(base) == shown


# --- probing through the real adapters ----------------------------------------------------------

def test_live_and_dead_deployments_are_told_apart_and_no_secret_is_shown(upstream, state):
    port = upstream.port
    deployments = [
        dep("live", base=upstream.base_url),
        dep("dead", base=f"http://127.0.0.1:{free_port()}/v1"),
        dep("creds", base=f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{port}/v1",
            extra_headers={"X-Tenant-Secret": HEADER_SECRET}),
        dep("wrongkey", base=upstream.base_url, api_key=WRONG_KEY),
        dep("five-hundred", "status-500", base=upstream.base_url),
        dep("mocked", "shin-mock", provider="mock", api_key=None),
    ]
    health, results = checker(deployments, state)
    body = health.probe_all()

    assert set(body) == {"healthy_endpoints", "unhealthy_endpoints", "healthy_count", "unhealthy_count"}
    assert ids(body["healthy_endpoints"]) == ["live", "creds", "mocked"]
    assert ids(body["unhealthy_endpoints"]) == ["dead", "wrongkey", "five-hundred"]
    assert (body["healthy_count"], body["unhealthy_count"]) == (3, 3)
    assert body["healthy_endpoints"][0] == {"model_name": "group-live",
                                            "model": "openai/meta-llama/Llama-3.1-8B-Instruct",
                                            "model_id": "live", "api_base": upstream.base_url}
    assert body["healthy_endpoints"][1]["api_base"] == f"http://127.0.0.1:{port}/v1"
    assert body["healthy_endpoints"][2]["api_base"] is None
    errors = {entry["model_id"]: entry["error"] for entry in body["unhealthy_endpoints"]}
    assert "unreachable" in errors["dead"]
    assert "credentials" in errors["wrongkey"]
    assert "HTTP 500" in errors["five-hundred"]
    assert all(isinstance(message, str) and message for message in errors.values())
    assert_no_secret(body)

    told = results.by_id()
    assert sorted(told) == sorted(d.id for d in deployments)          # once each
    assert len(results) == len(deployments)
    assert told["live"] is None and told["creds"] is None and told["mocked"] is None
    assert isinstance(told["wrongkey"], UpstreamAuthFailed)
    assert told["dead"].retryable and told["five-hundred"].retryable


def test_the_upstream_gets_the_cheapest_call_for_each_mode(upstream, state):
    upstream.reset()
    deployments = [dep("chat", "probe-chat", base=upstream.base_url),
                   dep("legacy", "probe-legacy", base=upstream.base_url, mode="completion"),
                   dep("embed", "probe-embed", base=upstream.base_url, mode="embedding")]
    body = checker(deployments, state)[0].probe_all()
    assert body["healthy_count"] == 3, body

    chat = upstream.last_request("probe-chat")
    assert chat["path"] == "/v1/chat/completions"
    assert chat["body"] == {"model": "probe-chat", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    assert chat["headers"]["X-Request-Id"] == "shin-gateway-health-check"
    legacy = upstream.last_request("probe-legacy")
    assert legacy["path"] == "/v1/completions"
    assert legacy["body"] == {"model": "probe-legacy", "prompt": "ping", "max_tokens": 1}
    embed = upstream.last_request("probe-embed")
    assert embed["path"] == "/v1/embeddings"
    assert embed["body"] == {"model": "probe-embed", "input": "ping"}
    assert [upstream.count(m) for m in ("probe-chat", "probe-legacy", "probe-embed")] == [1, 1, 1]


def test_a_deployment_without_its_credential_is_unhealthy_and_not_called(upstream, state):
    upstream.reset()
    keyless = dep("keyless", "probe-keyless", base=upstream.base_url, api_key=None,
                  unset_env=("SHIN_MISSING_KEY",))
    health, results = checker([keyless], state)
    body = health.probe_all()
    assert body["healthy_count"] == 0 and body["unhealthy_count"] == 1
    assert "SHIN_MISSING_KEY" in body["unhealthy_endpoints"][0]["error"]
    assert upstream.count("probe-keyless") == 0
    assert isinstance(results.by_id()["keyless"], UpstreamAuthFailed)


def test_a_hung_upstream_is_unhealthy_once_the_probe_budget_is_spent(upstream, state):
    """The budget bounds the adapter's own connect/read timeouts too, not only the deadline's timer."""
    hung = dep("hung", "hang-5", base=upstream.base_url, timeout=60.0, health_check_timeout=1.0)
    health, results = checker([hung, dep("live", base=upstream.base_url)], state)
    started = time.monotonic()
    body = health.probe_all()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5, elapsed
    assert ids(body["unhealthy_endpoints"]) == ["hung"] and ids(body["healthy_endpoints"]) == ["live"]
    assert isinstance(results.by_id()["hung"], UpstreamTimeout)


class _IgnoresItsDeadline:
    """A provider that breaks the protocol: it never looks at the deadline (cooperatively, as under gevent)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def complete(self, deployment, request, deadline=None):
        gevent.sleep(self.seconds)

    def close(self):
        pass


def test_probes_run_in_parallel_and_a_backstop_cuts_an_adapter_that_ignores_its_deadline(state):
    deployments = [dep(f"slow{i}", provider="slow", health_check_timeout=0.2) for i in range(5)]
    results = Results()
    health = HealthChecker(deployments, {"slow": _IgnoresItsDeadline(30)}, state, results, LOG, redactor=Redactor())
    started = time.monotonic()
    body = health.probe_all()
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"five 1.2 s backstops took {elapsed:.1f} s: not in parallel"
    assert body["unhealthy_count"] == 5
    assert all("0.2 s" in entry["error"] for entry in body["unhealthy_endpoints"])
    assert all(isinstance(error, UpstreamTimeout) for _, error in results)


def test_a_bug_inside_the_gateway_is_logged_with_its_stack_and_shown_as_a_sentence(upstream, state, caplog):
    orphan = dep("orphan", provider="no-such-adapter", base=f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1/v1")
    health, results = checker([orphan, dep("live", base=upstream.base_url)], state)
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        body = health.probe_all()
    assert body["unhealthy_endpoints"][0]["error"] == UNEXPECTED
    assert ids(body["healthy_endpoints"]) == ["live"]
    assert_no_secret(body)
    assert "KeyError" not in orjson.dumps(body).decode()
    logged = [r for r in caplog.records if "orphan" in r.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is KeyError
    assert results.by_id()["orphan"].message == UNEXPECTED


def test_a_failing_on_result_does_not_spoil_the_report(upstream, state, caplog):
    def broken(deployment, error):
        raise RuntimeError("recording failed")
    health, _ = checker([dep("live", base=upstream.base_url)], state, on_result=broken)
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        body = health.probe_all()
    assert ids(body["healthy_endpoints"]) == ["live"]
    assert any("recording the health" in r.getMessage() for r in caplog.records)


def test_a_failed_probe_cools_the_deployment_in_the_real_router(upstream, state):
    live, dead = dep("live", base=upstream.base_url), dep("dead", base=f"http://127.0.0.1:{free_port()}/v1")
    router = Router((live, dead), RouterSettings(cooldown_time=30.0), state)
    health, _ = checker([live, dead], state, on_result=router.note_probe)
    health.probe_all()
    live_stats, dead_stats = state.stats(["live", "dead"])
    assert live_stats.cooldown is None
    assert dead_stats.cooldown is not None and dead_stats.cooldown.until > time.time() + 20


# --- report() and the background loop -------------------------------------------------------------

def test_report_probes_every_time_unless_in_background_mode(upstream, state):
    upstream.reset()
    live = dep("live", "probe-report", base=upstream.base_url)
    health, _ = checker([live], state)
    health.report()
    health.report()
    assert upstream.count("probe-report") == 2


def test_in_background_mode_report_serves_the_last_published_result(upstream, state):
    upstream.reset()
    live = dep("live", "probe-stored", base=upstream.base_url)
    health, _ = checker([live], state, background=True)
    first = health.report()                         # nothing published yet: probes now
    assert upstream.count("probe-stored") == 1 and first["healthy_count"] == 1
    stored = {"healthy_endpoints": [], "unhealthy_endpoints": [], "healthy_count": 0, "unhealthy_count": 0}
    state.publish_health(orjson.dumps(stored))
    assert health.report() == stored
    assert upstream.count("probe-stored") == 1


def test_the_background_loop_probes_once_per_interval_across_workers_and_publishes(upstream, state):
    upstream.reset()
    live = dep("live", "probe-loop", base=upstream.base_url)
    dead = dep("dead", base=f"http://127.0.0.1:{free_port()}/v1")
    first, told_first = checker([live, dead], state)
    second, told_second = checker([live, dead], state)          # another worker on the same state
    loops = [gevent.spawn(first.run_background, 0.5), gevent.spawn(second.run_background, 0.5)]
    try:
        gevent.sleep(0.3)
        assert upstream.count("probe-loop") == 1                  # one claim per interval, two loops
        report = orjson.loads(state.health_report())
        assert ids(report["healthy_endpoints"]) == ["live"] and ids(report["unhealthy_endpoints"]) == ["dead"]
        assert first.report() == report and second.report() == report
        gevent.sleep(1.0)
        assert 2 <= upstream.count("probe-loop") <= 4, upstream.count("probe-loop")
        assert len(told_first) + len(told_second) == 2 * upstream.count("probe-loop")
    finally:
        gevent.killall(loops)
    assert all(loop.dead for loop in loops)


def test_the_background_loop_outlives_its_failures(upstream, caplog):
    broken = SharedMemoryState.private()
    broken.close()                                      # every state call now fails
    health, _ = checker([dep("live", base=upstream.base_url)], broken)
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        loop = gevent.spawn(health.run_background, 0.25)
        gevent.sleep(0.4)
        alive = not loop.dead
        loop.kill()
    assert alive
    failures = [r for r in caplog.records if "background health check failed" in r.getMessage()]
    assert len(failures) >= 2 and all(r.exc_info for r in failures)
