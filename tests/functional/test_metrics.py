"""GET /metrics on the real gateway (2 gevent workers): exact across workers and worker restarts.

Requests go out on fresh connections, so both workers serve them; then the
scrape, whichever worker answers it, must say exactly what was sent: the
request counter, the histogram counts, the retries, fallbacks and upstream
errors, and tokens and spend that add up to the spend logs, to the cent.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .test_cli_and_config import poll, workers_replaced

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
METRICS_TOKEN = "metrics-token-for-the-test-42"
IN_PRICE, OUT_PRICE = 0.000001, 0.000002


def config(upstream_url: str, extra_general: str = "") -> str:
    return f"""
model_list:
  - model_name: chat
    litellm_params:
      model: openai/echo-model
      api_base: {upstream_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
      input_cost_per_token: {IN_PRICE}
      output_cost_per_token: {OUT_PRICE}
  - model_name: broken
    litellm_params:
      model: openai/status-500
      api_base: {upstream_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
    model_info: {{id: broken-deployment}}
  - model_name: backup
    litellm_params:
      model: openai/backup-model
      api_base: {upstream_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
      input_cost_per_token: {IN_PRICE}
      output_cost_per_token: {OUT_PRICE}
  - model_name: slow
    litellm_params:
      model: openai/slow-30-100
      api_base: {upstream_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
router_settings:
  num_retries: 1
  cooldown_time: 0
  fallbacks: [{{broken: [backup]}}]
general_settings:
  master_key: {MASTER_KEY}
{extra_general}"""


def scrape(url: str, headers: dict | None = None) -> dict[tuple, float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    response = requests.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and all((k, v) in sample_labels for k, v in labels.items()))


def chat(url: str, model: str, *, key: str = MASTER_KEY, stream: bool = False, body: dict | None = None):
    payload = body if body is not None else {"model": model, "stream": stream,
                                             "messages": [{"role": "user", "content": "count me please"}]}
    if stream and body is None:
        payload["stream_options"] = {"include_usage": True}
    # a new connection per request: the two workers take turns accepting
    response = requests.post(f"{url}/v1/chat/completions", json=payload, timeout=30,
                             headers={"Authorization": f"Bearer {key}", "Connection": "close"})
    if stream:
        assert response.text.endswith("data: [DONE]\n\n"), response.text[-300:]
    return response.status_code


def spend_rows(url: str) -> list[dict]:
    response = requests.get(f"{url}/spend/logs", headers=AUTH, params={"page": 1, "page_size": 1000}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def rows_settle(url: str, count: int) -> list[dict]:
    rows = poll(lambda: (lambda r: r if len(r) >= count else None)(spend_rows(url)), timeout=15)
    assert rows and len(rows) == count, f"{len(rows or [])} spend rows, expected {count}"
    return rows


def served_by(logs: str) -> Counter:
    """How many request lines each worker wrote."""
    pids = Counter()
    for line in logs.splitlines():
        if '"event":"request"' in line:
            record = json.loads(line)
            if record["path"] == "/v1/chat/completions":
                pids[record["pid"]] += 1
    return pids


def test_counts_are_exact_across_two_workers_and_survive_worker_restarts(start_gateway, upstream):
    gateway = start_gateway(config(upstream.base_url), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    url = gateway.url
    response = requests.post(f"{url}/key/generate", json={"key_alias": "team-a"}, headers=AUTH, timeout=10)
    virtual_key = response.json()["key"]
    sent: Counter = Counter()

    def send(model, status, group, times, **kwargs):
        for _ in range(times):
            assert chat(url, model, **kwargs) == status
            sent[(group, status)] += 1

    send("chat", 200, "chat", 30)
    send("chat", 200, "chat", 10, stream=True)
    send("chat", 200, "chat", 8, key=virtual_key)
    send("broken", 200, "backup", 3)          # 2 attempts on broken (a retry), then the fallback answers
    before_restarts = len(rows_settle(url, sum(n for (g, s), n in sent.items() if s == 200)))

    # A graceful restart of one worker, then a SIGKILL of the other: neither loses a counted request.
    first, second = gateway.worker_pids()
    os.kill(first, signal.SIGTERM)
    assert poll(lambda: first not in gateway.worker_pids() and len(gateway.worker_pids()) == 2, timeout=15)
    send("chat", 200, "chat", 10)
    send("chat", 200, "chat", 6, stream=True, key=virtual_key)
    answered = sum(n for (g, s), n in sent.items() if s == 200)
    rows_settle(url, answered)                 # the killed worker's spend rows are written first
    os.kill(second, signal.SIGKILL)
    assert poll(lambda: second not in gateway.worker_pids() and len(gateway.worker_pids()) == 2, timeout=15)

    send("no-such-model", 404, "", 4)
    send("chat", 401, "", 3, key="sk-not-a-key-of-this-gateway")
    send("chat", 400, "", 2, body={"model": "chat", "messages": "not a list"})
    send("chat", 200, "chat", 10)
    answered = sum(n for (g, s), n in sent.items() if s == 200)
    rows = rows_settle(url, answered)
    assert before_restarts < answered

    samples = scrape(url)
    n = sum(sent.values())
    assert total(samples, "shin_gateway_requests_total") == n
    for (group, status), count in sent.items():
        assert total(samples, "shin_gateway_requests_total", model_group=group, status_code=str(status)) == count
    by_group = Counter()
    for (group, _), count in sent.items():
        by_group[group] += count
    for group, count in by_group.items():
        assert total(samples, "shin_gateway_request_duration_seconds_count", model_group=group) == count
        assert total(samples, "shin_gateway_request_duration_seconds_bucket", model_group=group, le="+Inf") == count
    assert total(samples, "shin_gateway_overhead_seconds_count") == n
    assert total(samples, "shin_gateway_time_to_first_token_seconds_count") == 16    # streams only
    assert total(samples, "shin_gateway_retries_total") == 3
    assert total(samples, "shin_gateway_fallbacks_total") == 3
    assert total(samples, "shin_gateway_upstream_errors_total", deployment="broken-deployment",
                 error_type="upstream_error") == 6
    assert total(samples, "shin_gateway_in_flight_requests") == 0
    assert total(samples, "shin_gateway_in_flight_streams") == 0

    # tokens and spend add up to the spend logs, per model group and per key
    for group in ("chat", "backup"):
        mine = [r for r in rows if r["model_group"] == group]
        assert total(samples, "shin_gateway_tokens_total", model_group=group, direction="input") == \
            sum(r["prompt_tokens"] for r in mine)
        assert total(samples, "shin_gateway_tokens_total", model_group=group, direction="output") == \
            sum(r["completion_tokens"] for r in mine)
        assert total(samples, "shin_gateway_spend_total", model_group=group) == \
            pytest.approx(sum(r["spend"] for r in mine), rel=1e-9)
    keyed = [r for r in rows if r["key_alias"] == "team-a"]
    assert len(keyed) == 14
    assert total(samples, "shin_gateway_key_requests_total", key_alias="team-a", status_code="200") == 14
    assert total(samples, "shin_gateway_key_tokens_total", key_alias="team-a") == \
        sum(r["prompt_tokens"] + r["completion_tokens"] for r in keyed)
    assert total(samples, "shin_gateway_key_spend_total", key_alias="team-a") == \
        pytest.approx(sum(r["spend"] for r in keyed), rel=1e-9)
    assert total(samples, "shin_gateway_spend_total") > 0

    # both first workers served (the one killed outright too), and every line is a counted request
    workers = served_by(gateway.logs())
    assert workers[first] and workers[second] and sum(workers.values()) == n, workers

    # every scrape, whichever worker answers, says the same
    for _ in range(6):
        again = requests.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text
        assert f'shin_gateway_requests_total{{model_group="chat",status_code="200"}} ' \
               f'{float(sent[("chat", 200)])}' in again


def test_in_flight_streams_and_deployments_while_a_stream_runs(start_gateway, upstream):
    gateway = start_gateway(config(upstream.base_url), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    done = threading.Event()
    thread = threading.Thread(target=lambda: (chat(gateway.url, "slow", stream=True), done.set()), daemon=True)
    thread.start()
    samples = poll(lambda: (lambda s: s if total(s, "shin_gateway_in_flight_streams") == 1 else None)(
        scrape(gateway.url)), timeout=5)
    assert samples, "the stream never showed as in flight"
    assert total(samples, "shin_gateway_in_flight_requests") == 1
    assert total(samples, "shin_gateway_deployment_in_flight", model_group="slow") == 1
    assert total(samples, "shin_gateway_deployment_cooling") == 0
    thread.join(20)
    assert done.is_set()
    after = scrape(gateway.url)
    assert total(after, "shin_gateway_in_flight_streams") == 0
    assert total(after, "shin_gateway_in_flight_requests") == 0
    assert total(after, "shin_gateway_time_to_first_token_seconds_count", model_group="slow") == 1
    # TTFT is the first chunk's time, the duration the whole stream's (30 chunks 0.1 s apart)
    assert total(after, "shin_gateway_time_to_first_token_seconds_sum") < 1.5
    assert total(after, "shin_gateway_request_duration_seconds_sum", model_group="slow") > 2.5


def test_a_deployment_cooling_down_is_counted_and_shown(start_gateway, upstream):
    text = config(upstream.base_url).replace("  cooldown_time: 0\n", "  cooldown_time: 30\n  allowed_fails: 1\n")
    gateway = start_gateway(text, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    assert chat(gateway.url, "broken") == 200     # fails twice (→ cooldown), then the fallback answers
    samples = scrape(gateway.url)
    assert total(samples, "shin_gateway_deployment_cooldowns_total", deployment="broken-deployment") == 1
    assert total(samples, "shin_gateway_deployment_cooling", deployment="broken-deployment") == 1
    assert total(samples, "shin_gateway_deployment_cooling", model_group="chat") == 0
    cooldowns = [json.loads(line) for line in gateway.logs().splitlines() if '"event":"cooldown"' in line]
    assert [c["deployment"] for c in cooldowns] == ["broken-deployment"]
    assert cooldowns[0]["error_type"] == "upstream_error" and cooldowns[0]["level"] == "warning"


def test_the_metrics_token_guards_metrics_when_set(start_gateway, upstream):
    gateway = start_gateway(config(upstream.base_url, "  metrics_token: os.environ/METRICS_TOKEN\n"),
                            env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY, "METRICS_TOKEN": METRICS_TOKEN}, workers=1)
    for headers in (None, {"Authorization": "Bearer wrong-token"}, {"Authorization": METRICS_TOKEN}):
        response = requests.get(f"{gateway.url}/metrics", headers=headers, timeout=10)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert METRICS_TOKEN not in response.text
    assert scrape(gateway.url, {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scrape(gateway.url, AUTH)             # the master key may read them too


def test_metrics_can_be_turned_off(start_gateway, upstream):
    gateway = start_gateway(config(upstream.base_url, "  disable_metrics: true\n"),
                            env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}, workers=1)
    assert chat(gateway.url, "chat") == 200
    response = requests.get(f"{gateway.url}/metrics", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_the_operators_metrics_directory_is_emptied_at_start_and_kept_across_reloads(start_gateway, upstream,
                                                                                    tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"left over from an earlier run")
    gateway = start_gateway(config(upstream.base_url), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY,
                                                           "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert not (directory / "counter_1.db").exists()
    assert chat(gateway.url, "chat") == 200
    assert any(path.suffix == ".db" for path in directory.iterdir())
    workers = set(gateway.worker_pids())
    gateway.reload()                               # a reload keeps the files, so the counts too
    assert poll(workers_replaced(gateway, workers), timeout=15)
    assert chat(gateway.url, "chat") == 200
    assert total(scrape(gateway.url), "shin_gateway_requests_total") == 2


def test_without_a_directory_the_master_makes_one_and_removes_it_at_exit(start_gateway, upstream):
    gateway = start_gateway(config(upstream.base_url), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    assert chat(gateway.url, "chat") == 200
    workers = gateway.worker_pids()

    def ours(name: str) -> bool:   # other gateways of the session may have theirs in /dev/shm too
        folder = os.path.join("/dev/shm", name)
        return any(f.endswith(f"_{pid}.db") for pid in workers for f in os.listdir(folder))
    made = [name for name in os.listdir("/dev/shm") if name.startswith("shin-gateway-metrics-") and ours(name)]
    assert len(made) == 1
    gateway.stop()
    assert not os.path.exists(os.path.join("/dev/shm", made[0]))
