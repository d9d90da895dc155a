"""GET /health on the real gateway (2 gevent workers): live and dead deployments told apart, no credential
in the body, each probe within its budget, the cheapest call per mode, and background checks that cool."""
from __future__ import annotations

import json
import time

import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .gateway_process import free_port
from .wire import assert_no_leak, assert_openai_error

DEAD_KEY = "dead-upstream-key-0a1b2c"
WRONG_KEY = "wrong-upstream-key-3d4e5f"
HEADER_SECRET = "tenant-header-secret-6g7h"
URL_USER = "urluser-8i9j"
URL_PASSWORD = "urlpass-s3cret-0k1l"
SECRETS = (MASTER_KEY, UPSTREAM_KEY, DEAD_KEY, WRONG_KEY, HEADER_SECRET, URL_USER, URL_PASSWORD)
ENV = {"TEST_UPSTREAM_KEY": UPSTREAM_KEY}
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
PROBE_ID = "shin-gateway-health-check"     # the X-Request-Id a probe carries upstream


def deployment(name: str, model: str, base: str, *, key: str = "os.environ/TEST_UPSTREAM_KEY",
               id: str | None = None, extra: str = "", info: str = "") -> str:
    model_info = f"\n    model_info:\n      id: {id}{info}" if id else ""
    return f"""
  - model_name: {name}
    litellm_params:
      model: openai/{model}
      api_base: {base}
      api_key: {key}{extra}{model_info}"""


def config(*entries: str, router: str = "", general: str = "") -> str:
    return f"""model_list:{''.join(entries)}
router_settings:
  num_retries: 0
  allowed_fails: 1000000{router}
general_settings:
  master_key: {MASTER_KEY}{general}
"""


def get_health(gateway, headers=MASTER, timeout: float = 20) -> requests.Response:
    return requests.get(f"{gateway.url}/health", headers=headers, timeout=timeout)


def assert_no_secret(response: requests.Response) -> None:
    for secret in SECRETS:
        assert secret not in response.text, f"/health body carries {secret!r}: {response.text}"
        assert secret not in str(response.headers), f"/health headers carry {secret!r}"
    assert_no_leak(response.text)


def ids(entries) -> list[str]:
    return [entry["model_id"] for entry in entries]


def probes_of(upstream, model: str) -> list[dict]:
    with upstream.lock:
        return [r for r in upstream.requests if (r["body"] or {}).get("model") == model]


def test_health_tells_live_from_dead_and_shows_no_credential(start_gateway, upstream):
    port = upstream.port
    gateway = start_gateway(config(
        deployment("live", "health-live", upstream.base_url, id="live-1"),
        deployment("dead", "health-dead", f"http://127.0.0.1:{free_port()}/v1", key=DEAD_KEY, id="dead-1"),
        deployment("creds", "health-creds", f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{port}/v1", id="creds-1",
                   extra=f"\n      extra_headers:\n        X-Tenant-Secret: {HEADER_SECRET}"),
        deployment("wrongkey", "health-wrongkey", upstream.base_url, key=WRONG_KEY, id="wrongkey-1"),
        deployment("embed", "health-embed", upstream.base_url, id="embed-1", info="\n      mode: embedding"),
    ), env=ENV)

    response = get_health(gateway)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"healthy_endpoints", "unhealthy_endpoints", "healthy_count", "unhealthy_count"}
    assert ids(body["healthy_endpoints"]) == ["live-1", "creds-1", "embed-1"], body
    assert ids(body["unhealthy_endpoints"]) == ["dead-1", "wrongkey-1"], body
    assert (body["healthy_count"], body["unhealthy_count"]) == (3, 2)
    assert body["healthy_endpoints"][0] == {"model_name": "live", "model": "openai/health-live",
                                            "model_id": "live-1", "api_base": upstream.base_url}
    assert body["healthy_endpoints"][1]["api_base"] == f"http://127.0.0.1:{port}/v1"
    for entry in body["unhealthy_endpoints"]:
        assert set(entry) == {"model_name", "model", "model_id", "api_base", "error"}, entry
        assert isinstance(entry["error"], str) and entry["error"], entry
    assert_no_secret(response)

    embed = probes_of(upstream, "health-embed")[-1]
    assert embed["path"] == "/v1/embeddings" and embed["body"] == {"model": "health-embed", "input": "ping"}
    chat = probes_of(upstream, "health-live")[-1]
    assert chat["path"] == "/v1/chat/completions" and chat["body"]["max_tokens"] == 1
    assert chat["headers"].get("X-Request-Id") == PROBE_ID
    assert probes_of(upstream, "health-creds")[-1]["headers"].get("X-Tenant-Secret") == HEADER_SECRET

    for headers in ({}, {"Authorization": "Bearer sk-not-the-master-key"}, {"Authorization": MASTER_KEY}):
        assert_openai_error(get_health(gateway, headers), 401, "authentication_error", code="invalid_api_key")
    for alias in ("api-key", "x-api-key"):
        assert get_health(gateway, {alias: MASTER_KEY}).status_code == 200
    assert requests.get(f"{gateway.url}/health/liveliness", timeout=5).status_code == 200
    ready = requests.get(f"{gateway.url}/health/readiness", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["state_backend"] == "shared-memory", ready.text
    logs = gateway.logs()
    for secret in SECRETS:
        assert secret not in logs, f"the gateway log carries {secret!r}"


def test_a_hung_deployment_is_unhealthy_within_its_health_check_timeout(start_gateway, upstream):
    gateway = start_gateway(config(
        deployment("hung", "hang-5", upstream.base_url, id="hung-1", info="\n      health_check_timeout: 1"),
        deployment("live", "health-live-2", upstream.base_url, id="live-2"),
    ), env=ENV)
    started = time.monotonic()
    response = get_health(gateway)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert 0.9 <= elapsed < 2.5, f"/health took {elapsed:.2f} s for a 1 s probe budget"
    body = response.json()
    assert ids(body["unhealthy_endpoints"]) == ["hung-1"] and ids(body["healthy_endpoints"]) == ["live-2"], body
    assert "time" in body["unhealthy_endpoints"][0]["error"], body
    assert_no_secret(response)


def test_without_a_master_key_health_is_open_like_every_route(start_gateway):
    gateway = start_gateway("""
        model_list:
          - model_name: mock
            litellm_params:
              model: mock/shin-mock
            model_info:
              id: mock-1
        """)
    response = get_health(gateway, headers={})
    assert response.status_code == 200, response.text
    assert response.json() == {"healthy_endpoints": [{"model_name": "mock", "model": "mock/shin-mock",
                                                      "model_id": "mock-1", "api_base": None}],
                               "unhealthy_endpoints": [], "healthy_count": 1, "unhealthy_count": 0}


def test_background_checks_publish_their_last_result_and_cool_failing_deployments(start_gateway, upstream):
    gateway = start_gateway(config(
        deployment("live", "health-bg-live", upstream.base_url, id="bg-live"),
        deployment("dead", "health-bg-dead", f"http://127.0.0.1:{free_port()}/v1", id="bg-dead"),
        deployment("failing", "status-503", upstream.base_url, id="bg-failing"),
        router="\n  cooldown_time: 60",
        general="\n  background_health_checks: true\n  health_check_interval: 1",
    ), env=ENV)
    deadline = time.monotonic() + 10
    while not probes_of(upstream, "health-bg-live") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert probes_of(upstream, "health-bg-live"), "the background loop never probed"

    before = len(probes_of(upstream, "health-bg-live"))
    started = time.monotonic()
    bodies = [get_health(gateway) for _ in range(12)]
    spent = time.monotonic() - started
    probed = len(probes_of(upstream, "health-bg-live")) - before
    assert probed <= spent + 2, f"{len(bodies)} calls of /health in {spent:.1f} s made {probed} probes"
    for response in bodies:
        assert response.status_code == 200, response.text
        body = response.json()
        assert ids(body["healthy_endpoints"]) == ["bg-live"], body
        assert ids(body["unhealthy_endpoints"]) == ["bg-dead", "bg-failing"], body
        assert_no_secret(response)

    time.sleep(2.5)             # a few more intervals: about one probe each, whichever worker claims it
    cadence = [r["at"] for r in probes_of(upstream, "health-bg-live")]
    gaps = [b - a for a, b in zip(cadence, cadence[1:], strict=False)][-3:]
    assert gaps and all(0.7 <= gap <= 1.8 for gap in gaps), gaps

    for model in ("dead", "failing"):
        for attempt in range(6):                    # new connections: both workers answer some
            request_id = f"client-{model}-{attempt}"
            response = requests.post(f"{gateway.url}/v1/chat/completions", timeout=10,
                                     headers={**MASTER, "x-request-id": request_id, "Connection": "close"},
                                     json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert_openai_error(response, 503, "api_error", code="no_healthy_deployment")
            assert int(response.headers["Retry-After"]) >= 1
    with upstream.lock:
        reached = [r for r in upstream.requests if r["headers"].get("X-Request-Id", "").startswith("client-")]
    assert not reached, f"a cooled deployment was called: {[r['headers']['X-Request-Id'] for r in reached]}"
    live = requests.post(f"{gateway.url}/v1/chat/completions", headers=MASTER, timeout=10,
                         json={"model": "live", "messages": [{"role": "user", "content": "hi"}]})
    assert live.status_code == 200, live.text
    # the log said once that each failing deployment went unhealthy, and that probes cooled them
    records = [json.loads(line) for line in gateway.logs().splitlines()]
    changes = [(r["deployment"], r["healthy"]) for r in records if r["event"] == "health_change"]
    assert sorted(changes) == [("bg-dead", False), ("bg-failing", False)], changes
    cooled = sorted(r["deployment"] for r in records if r["event"] == "cooldown")
    assert cooled == ["bg-dead", "bg-failing"], cooled     # once each, not once per probe
