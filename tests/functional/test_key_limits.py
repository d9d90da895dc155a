"""Virtual keys' limits against the real gateway (2 gevent workers, embedded default): exact, not per worker.

Requests are sent on connections known to be served by worker 1 or worker 2,
all at once, so a limit counted per worker would let twice as many through.
Prices are binary fractions, so sums of costs are exact and a test can say
"exactly four fit in this budget".
"""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway.tokens import completion_reserve, estimate_prompt_tokens

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .fake_upstream import FakeUpstream
from .gateway_process import GatewayProcess
from .router_wire import AUTH, ENV, chat, deployment, minute_left, pin_workers, retry_after, router_config

INPUT_PRICE, OUTPUT_PRICE = 0.0625, 0.125
CALL_COST = 11 * INPUT_PRICE + 7 * OUTPUT_PRICE       # the fake's usage: 11 prompt, 7 completion tokens
PRICED = {"input_cost_per_token": INPUT_PRICE, "output_cost_per_token": OUTPUT_PRICE}
EXACT_PROMPT = "x" * 28      # 7 + 4 framing = 11 estimated prompt tokens, what the fake reports


@pytest.fixture(scope="module")
def fakes():
    made = {"fast": FakeUpstream(api_key=UPSTREAM_KEY).start(), "streams": FakeUpstream(api_key=UPSTREAM_KEY).start()}
    yield made
    for fake in made.values():
        fake.stop()


def limits_config(fakes) -> str:
    return router_config(
        deployment("fast", "fast-1", fakes["fast"], "echo", **PRICED),
        deployment("slow", "slow-1", fakes["fast"], "hang-0.5", **PRICED),
        deployment("streamy", "streamy-1", fakes["streams"], "slow-8-100", **PRICED))


@pytest.fixture(scope="module")
def gateway(fakes, tmp_path_factory):
    path = tmp_path_factory.mktemp("key-limits") / "config.yaml"
    path.write_text(limits_config(fakes))
    gateway = GatewayProcess(path, workers=2, env=ENV).start()
    yield gateway
    gateway.stop()


def generate(gateway: GatewayProcess, **fields) -> str:
    response = requests.post(f"{gateway.url}/key/generate", json=fields, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["key"]


def key_info(gateway: GatewayProcess, key: str) -> dict:
    response = requests.get(f"{gateway.url}/key/info", params={"key": key}, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["info"]


def all_at_once(gateway: GatewayProcess, key: str, body: dict, count: int) -> list[tuple[int, dict, dict]]:
    """`count` requests on connections split between the two workers, released together."""
    per_worker = math.ceil(count / 2)
    workers = pin_workers(gateway, per_worker=per_worker)
    connections = [c for pair in zip(*workers, strict=True) for c in pair][:count]
    start = threading.Barrier(count)

    def one(connection):
        start.wait()
        response = connection.send(body, key=key)
        data = response.read()
        return response.status, dict(response.getheaders()), (json.loads(data) if data and not body.get("stream")
                                                               else {"raw": data})
    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(one, connections))
    finally:
        for connection in connections:
            connection.close()


def post(gateway, key, body, **headers) -> requests.Response:
    return requests.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}", **headers})


def test_rpm_limit_lets_exactly_its_count_through_across_both_workers(gateway, fakes):
    minute_left(20)
    key = generate(gateway, rpm_limit=5)
    before = fakes["fast"].count("hang-0.5")
    results = all_at_once(gateway, key, chat("slow"), 20)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 5 + [429] * 15
    assert fakes["fast"].count("hang-0.5") - before == 5          # the refused never reached the upstream
    for status, headers, body in results:
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers["x-ratelimit-limit-requests"] == "5"
        if status == 429:
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert body["error"]["type"] == "rate_limit_error"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert 1 <= int(headers["retry-after"]) <= 60


def test_tpm_limit_holds_each_requests_estimate_then_counts_real_tokens(gateway, fakes):
    minute_left(20)
    key = generate(gateway, tpm_limit=100)
    body = chat("slow", "hi", max_tokens=14)
    estimate = estimate_prompt_tokens("chat/completions", body) + completion_reserve("chat/completions", body)
    assert estimate == 19                                            # ≥ the 18 the fake will report
    results = all_at_once(gateway, key, body, 20)
    assert sorted(status for status, _, _ in results) == [200] * (100 // estimate) + [429] * (20 - 100 // estimate)
    # 5 × 18 = 90 used, nothing in flight: one more may go alone, then the minute is spent
    alone = post(gateway, key, body)
    assert alone.status_code == 200
    assert alone.headers["x-ratelimit-limit-tokens"] == "100"
    refused = post(gateway, key, body)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    retry_after(refused.headers)


def test_max_parallel_requests_keeps_the_upstream_at_two_streams(gateway, fakes):
    key = generate(gateway, max_parallel_requests=2)
    fakes["streams"].peak_streams = 0
    results = all_at_once(gateway, key, chat("streamy", stream=True), 10)
    assert sorted(status for status, _, _ in results) == [200, 200] + [429] * 8
    assert fakes["streams"].peak_streams == 2
    for status, _, body in results:
        if status == 200:
            assert body["raw"].endswith(b"data: [DONE]\n\n")
    assert post(gateway, key, chat("streamy", stream=True)).status_code == 200   # the slots came back


def test_a_budget_is_never_overrun_by_concurrent_requests(gateway):
    key = generate(gateway, max_budget=4 * CALL_COST)
    body = chat("slow", EXACT_PROMPT, max_tokens=7)                 # estimate = the real cost
    results = all_at_once(gateway, key, body, 20)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 4 + [429] * 16
    assert {b["error"]["code"] for s, _, b in results if s == 429} == {"budget_exceeded"}
    spent = [float({k.lower(): v for k, v in h.items()}["x-litellm-response-cost"])
             for s, h, _ in results if s == 200]
    assert spent == [CALL_COST] * 4
    nxt = post(gateway, key, body)
    assert nxt.status_code == 429 and nxt.json()["error"]["code"] == "budget_exceeded"
    assert nxt.headers["x-should-retry"] == "false"
    retry_after(nxt.headers)
    time.sleep(1.0)                                                 # the spend writer's batch
    assert key_info(gateway, key)["spend"] == pytest.approx(4 * CALL_COST)


def test_without_max_tokens_the_default_reservation_keeps_spend_within_one_request(gateway):
    key = generate(gateway, max_budget=4 * CALL_COST)
    body = chat("slow", "hi")                                      # 256 completion tokens held: more than the budget
    results = all_at_once(gateway, key, body, 20)
    served = sum(status == 200 for status, _, _ in results)
    assert served == 1                                             # so only one goes at a time
    while post(gateway, key, body).status_code == 200:
        served += 1
    assert served == 4                                             # and the budget is spent, not overrun


def test_a_streams_spend_comes_from_its_usage_and_the_budget_resets_each_period(gateway, fakes):
    key = generate(gateway, max_budget=CALL_COST, budget_duration="3s")
    stream = post(gateway, key, chat("streamy", stream=True))
    assert stream.status_code == 200 and b'"choices":[]' not in stream.content   # usage not asked for: not sent
    stream_cost = 11 * INPUT_PRICE + 8 * OUTPUT_PRICE                # the fake: 11 prompt, one token per chunk
    refused = post(gateway, key, chat("fast"))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert 1 <= retry_after(refused.headers) <= 3
    time.sleep(retry_after(refused.headers) + 0.2)
    fresh = post(gateway, key, chat("fast"))
    assert fresh.status_code == 200, fresh.text
    assert float(fresh.headers["x-litellm-key-spend"]) == pytest.approx(CALL_COST)
    time.sleep(1.0)
    logs = requests.get(f"{gateway.url}/spend/logs", params={"api_key": key}, headers=AUTH, timeout=10).json()
    streamed = [row for row in logs if row["model_group"] == "streamy"]
    assert len(streamed) == 1
    assert (streamed[0]["prompt_tokens"], streamed[0]["completion_tokens"]) == (11, 8)
    assert streamed[0]["spend"] == pytest.approx(stream_cost)


def test_blocked_and_deleted_keys_are_refused_by_every_worker_within_a_second(gateway):
    for change in ("block", "delete"):
        key = generate(gateway)
        workers = pin_workers(gateway, per_worker=1)
        connections = [conns[0] for conns in workers]
        try:
            for connection in connections:                            # each worker has the key cached now
                assert connection.post(chat("fast"), key=key)[0].status == 200
            if change == "block":
                changed = requests.post(f"{gateway.url}/key/block", json={"key": key}, headers=AUTH, timeout=10)
            else:
                changed = requests.post(f"{gateway.url}/key/delete", json={"keys": [key]}, headers=AUTH, timeout=10)
            assert changed.status_code == 200, changed.text
            done = time.monotonic()
            refused_after = {}
            while len(refused_after) < 2 and time.monotonic() - done < 3:
                for connection in connections:
                    if connection.pid not in refused_after:
                        response, body = connection.post(chat("fast"), key=key)
                        if response.status == 401:
                            assert body["error"]["code"] == "invalid_api_key"
                            refused_after[connection.pid] = time.monotonic() - done
                time.sleep(0.02)
            assert len(refused_after) == 2 and max(refused_after.values()) <= 1.0, (change, refused_after)
        finally:
            for connection in connections:
                connection.close()


def test_an_expired_key_is_refused(gateway):
    key = generate(gateway, duration="1s")
    assert post(gateway, key, chat("fast")).status_code == 200
    time.sleep(1.6)
    expired = post(gateway, key, chat("fast"))
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "invalid_api_key" and "expired" in expired.json()["error"]["message"]


def test_sigterm_under_load_loses_no_spend_row_and_stores_no_plaintext(fakes, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(limits_config(fakes))
    gateway = GatewayProcess(config, workers=2, env=ENV).start()
    key = generate(gateway)
    completed: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            request_id = uuid.uuid4().hex
            try:
                response = post(gateway, key, chat("fast"), **{"x-request-id": request_id, "Connection": "close"})
            except requests.RequestException:
                return                                               # the gateway has gone: done
            if response.status_code == 200:
                with lock:
                    completed.append(request_id)
    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(completed) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(gateway.proc.pid, signal.SIGTERM)                       # while the clients keep sending
    gateway.proc.wait(timeout=30)
    stop.set()
    for thread in threads:
        thread.join(10)
    gateway.stop()
    assert len(completed) >= 500

    database = tmp_path / "gateway.db"
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT request_id, COUNT(*) FROM spend_rows GROUP BY request_id").fetchall()
    counts = dict(rows)
    assert all(counts.get(request_id) == 1 for request_id in completed), \
        [r for r in completed if counts.get(r) != 1][:5]
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("gateway.db*"))
    assert key.encode() not in stored and key[3:].encode() not in stored
    assert MASTER_KEY.encode() not in stored

    again = GatewayProcess(config, workers=2, env=ENV).start()     # what the APIs say agrees with the rows
    try:
        total = requests.get(f"{again.url}/global/spend", headers=AUTH, timeout=10).json()["spend"]
        logs = requests.get(f"{again.url}/spend/logs", params={"api_key": key, "page": 1, "page_size": 100},
                            headers=AUTH, timeout=10).json()
        assert logs["total"] == sum(counts.values())
        assert total == pytest.approx(sum(counts.values()) * CALL_COST)
        assert key_info(again, key)["spend"] == pytest.approx(total)
    finally:
        again.stop()


def test_a_key_sees_and_calls_only_its_models(gateway):
    import openai

    key = generate(gateway, models=["fast"])
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    assert [model.id for model in client.models.list()] == ["fast"]
    assert client.models.retrieve("fast").id == "fast"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("slow")                  # as for a model that does not exist
    assert client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}]).choices
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_allowed"
