"""Virtual keys at scale against real servers: two instances on PostgreSQL + Redis, and either one stopped.

Two gateway instances (2 gevent workers each) on one PostgreSQL database and one
Redis count every key limit together: requests sent on connections known to be
accepted by each of the four workers, released at once, let exactly the limit
through. Then a private PostgreSQL cluster is stopped mid-test (keys seen
recently keep working from the cache, a key never seen gets 503, spend rows
wait and are written when it is back) and a private Redis is stopped mid-test
(the instance enforces limits on its own counters and says so in readiness).
The machine's servers on 5432 and 6379 are never stopped.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from gateway.tokens import completion_reserve, estimate_prompt_tokens

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .fake_upstream import FakeUpstream
from .gateway_process import GatewayProcess
from .postgres_server import PASSWORD as PG_PASSWORD
from .postgres_server import PostgresServer, isolated_postgres_url
from .redis_server import PASSWORD as REDIS_PASSWORD
from .redis_server import RedisServer
from .router_wire import AUTH, CHAT, ENV, chat, deployment, minute_left, pin_workers, retry_after

INPUT_PRICE, OUTPUT_PRICE = 0.0625, 0.125
CALL_COST = 11 * INPUT_PRICE + 7 * OUTPUT_PRICE       # the fake's usage: 11 prompt, 7 completion tokens
PRICED = {"input_cost_per_token": INPUT_PRICE, "output_cost_per_token": OUTPUT_PRICE}
EXACT_PROMPT = "x" * 28      # 7 + 4 framing = 11 estimated prompt tokens, what the fake reports
CACHE_TTL = 0.5              # the per-worker key cache's freshness


@pytest.fixture(scope="module")
def fake():
    server = FakeUpstream(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server.start()
    server.stop()


@pytest.fixture
def private_postgres():
    with PostgresServer() as server:
        yield server


def config(fake: FakeUpstream, **general) -> str:
    """Group "fast" (answers at once) and "slow" (after 0.5 s, so requests overlap), priced."""
    return yaml.safe_dump({
        "model_list": [deployment("fast", "fast-1", fake, "echo", **PRICED),
                       deployment("slow", "slow-1", fake, "hang-0.5", **PRICED)],
        "router_settings": {"num_retries": 0, "cooldown_time": 0},
        "general_settings": {"master_key": MASTER_KEY, **general},
    }, sort_keys=False)


def start(tmp_path, name: str, text: str) -> GatewayProcess:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return GatewayProcess(path, workers=2, env=ENV).start()


def generate(gateway: GatewayProcess, **fields) -> str:
    response = requests.post(f"{gateway.url}/key/generate", json=fields, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["key"]


def call(connection, key: str, body: dict, request_id: str | None = None) -> tuple[int, dict, dict]:
    """POST on one pinned connection: status, lower-cased headers, JSON body."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if request_id:
        headers["x-request-id"] = request_id
    connection.connection.request("POST", CHAT, body=json.dumps(body), headers=headers)
    response = connection.connection.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data) if data else {}


def release_together(connections, key: str, body: dict) -> list[tuple[int, dict, dict]]:
    """One request on each connection, all released by one barrier."""
    barrier = threading.Barrier(len(connections))

    def one(connection):
        barrier.wait()
        return call(connection, key, body)
    with ThreadPoolExecutor(len(connections)) as pool:
        return list(pool.map(one, connections))


def statuses(results) -> list[int]:
    return sorted(status for status, _, _ in results)


def readiness(gateway: GatewayProcess) -> tuple[int, dict]:
    """One answer on a fresh connection, so either worker may give it."""
    response = requests.get(f"{gateway.url}/health/readiness", headers={"Connection": "close"}, timeout=5)
    return response.status_code, response.json()


def settled_readiness(gateway: GatewayProcess, check, timeout: float, answers: int = 8) -> tuple[int, dict]:
    """Wait until `answers` readiness answers in a row satisfy check(status, body): both workers agree."""
    deadline = time.monotonic() + timeout
    streak, answer = 0, None
    while streak < answers:
        assert time.monotonic() < deadline, f"readiness never settled; last answer {answer}"
        answer = readiness(gateway)
        streak = streak + 1 if check(*answer) else 0
        if not streak:
            time.sleep(0.1)
    return answer


# --- two instances, one PostgreSQL database and one Redis -----------------------------------

@pytest.fixture
def two_instances(fake, tmp_path, private_redis):
    """Instances A and B on an isolated schema of the machine's PostgreSQL and on a private Redis."""
    with isolated_postgres_url() as database_url:
        text = config(fake, database_url=database_url, redis_url=private_redis.url)
        started = []
        try:
            for name in ("a", "b"):
                started.append(start(tmp_path, name, text))
            yield started
        finally:
            for gateway in started:
                gateway.stop()


def four_workers(instances, per_worker: int):
    """`per_worker` connections to each worker of each instance, interleaved: A1 A2 B1 B2 A1 …"""
    lists = [conns for gateway in instances for conns in pin_workers(gateway, per_worker=per_worker)]
    return [c for group in zip(*lists, strict=True) for c in group]


def test_rpm_limit_is_exact_across_two_instances_and_their_workers(two_instances, fake):
    a, b = two_instances
    for gateway in two_instances:
        status, body = readiness(gateway)
        assert status == 200 and body["checks"]["database"] == "ok" and body["checks"]["limits"] == "ok", body
    minute_left(20)
    key = generate(a, rpm_limit=5)
    connections = four_workers(two_instances, per_worker=5)
    assert len({c.pid for c in connections}) == 4
    try:
        before = fake.count("hang-0.5")
        results = release_together(connections, key, chat("slow"))
        assert statuses(results) == [200] * 5 + [429] * 15
        assert fake.count("hang-0.5") - before == 5                 # the refused never reached the upstream
        for status, headers, body in results:
            assert headers["x-ratelimit-limit-requests"] == "5"
            if status == 429:
                assert body["error"]["code"] == "rate_limit_exceeded"
                assert body["error"]["type"] == "rate_limit_error"
                assert 1 <= int(headers["retry-after"]) <= 60
    finally:
        for connection in connections:
            connection.close()
    served = [connections[i].pid for i, (status, _, _) in enumerate(results) if status == 200]
    print(f"served by workers {Counter(served)}")


def test_tpm_limit_and_budget_are_counted_once_for_both_instances(two_instances):
    a, b = two_instances
    minute_left(20)
    tpm_key = generate(a, tpm_limit=100)
    body = chat("slow", "hi", max_tokens=14)
    estimate = estimate_prompt_tokens("chat/completions", body) + completion_reserve("chat/completions", body)
    assert estimate == 19                                             # ≥ the 18 the fake will report
    connections = four_workers(two_instances, per_worker=5)
    try:
        results = release_together(connections, tpm_key, body)
        assert statuses(results) == [200] * (100 // estimate) + [429] * (20 - 100 // estimate)
        assert {r["error"]["code"] for s, _, r in results if s == 429} == {"rate_limit_exceeded"}
        # 5 × 18 = 90 used in both instances' eyes: one more goes alone (through B), then the minute is spent
        b_first = connections[2]
        assert call(b_first, tpm_key, body)[0] == 200
        for connection in connections[:4]:                            # every worker of both instances refuses
            status, headers, refused = call(connection, tpm_key, body)
            assert status == 429 and refused["error"]["code"] == "rate_limit_exceeded", refused
            assert headers["x-ratelimit-remaining-tokens"] == "0"

        budget_key = generate(b, max_budget=4 * CALL_COST)
        priced = chat("slow", EXACT_PROMPT, max_tokens=7)             # estimate = the real cost
        results = release_together(connections, budget_key, priced)
        assert statuses(results) == [200] * 4 + [429] * 16
        assert {r["error"]["code"] for s, _, r in results if s == 429} == {"budget_exceeded"}
        assert [float(h["x-litellm-response-cost"]) for s, h, _ in results if s == 200] == [CALL_COST] * 4
        for connection in connections[:4]:
            status, headers, refused = call(connection, budget_key, chat("fast"))
            assert status == 429 and refused["error"]["code"] == "budget_exceeded", refused
            assert headers["x-should-retry"] == "false"
    finally:
        for connection in connections:
            connection.close()
    deadline = time.monotonic() + 10                                  # the spend writers' batches
    while True:
        info = requests.get(f"{a.url}/key/info", params={"key": budget_key}, headers=AUTH, timeout=10).json()
        if info["info"]["spend"] == pytest.approx(4 * CALL_COST) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert info["info"]["spend"] == pytest.approx(4 * CALL_COST)


# --- PostgreSQL stopped mid-test ------------------------------------------------------------

def test_postgres_stopped_keeps_seen_keys_working_and_loses_no_spend_row(fake, private_postgres, start_gateway):
    gateway = start_gateway(config(fake, database_url=private_postgres.url), env=ENV)
    connections = [conns[0] for conns in pin_workers(gateway)]
    sent: list[str] = []           # request ids sent with K1 that were answered 200
    outage_master: list[str] = []
    try:
        k1 = generate(gateway)
        for connection in connections:                                # both workers have K1 cached
            rid = uuid.uuid4().hex
            status, _, body = call(connection, k1, chat("fast"), rid)
            assert status == 200, body
            sent.append(rid)
        k2 = generate(gateway)                                        # never used before the outage

        private_postgres.stop()
        stopped = time.monotonic()
        while time.monotonic() - stopped < 3.0:                       # many times the 0.5 s cache TTL
            for connection in connections:
                rid = uuid.uuid4().hex
                began = time.monotonic()
                status, _, body = call(connection, k1, chat("fast"), rid)
                assert status == 200, (connection.pid, body)
                assert time.monotonic() - began < 2.0, "a cached key waited on the stopped database"
                sent.append(rid)
            time.sleep(CACHE_TTL / 2)
        for connection in connections:
            status, headers, body = call(connection, k2, chat("fast"))
            assert status == 503, (connection.pid, body)
            assert body["error"]["code"] == "service_unavailable", body
            retry_after({"Retry-After": headers.get("retry-after")})
            rid = uuid.uuid4().hex
            status, _, body = call(connection, MASTER_KEY, chat("fast"), rid)
            assert status == 200, body
            outage_master.append(rid)
        status, body = settled_readiness(gateway, lambda s, b: s == 503, timeout=5)
        assert body["checks"]["database"] == "unreachable", body
        assert PG_PASSWORD not in json.dumps(body)

        private_postgres.start()
        status, body = settled_readiness(gateway, lambda s, b: s == 200, timeout=20)
        assert body["checks"]["database"] == "ok", body
        for connection in connections:
            status, _, body = call(connection, k2, chat("fast"))
            assert status == 200, (connection.pid, body)
    finally:
        for connection in connections:
            connection.close()

    deadline = time.monotonic() + 15                                  # the writers retry every 1 … 5 s
    while True:
        logs = requests.get(f"{gateway.url}/spend/logs", params={"api_key": k1, "page": 1, "page_size": 500},
                            headers=AUTH, timeout=10).json()
        if logs["total"] >= len(sent) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    listed = Counter(row["request_id"] for row in logs["data"])
    assert logs["total"] == len(sent) and listed == Counter(sent), \
        (len(sent), logs["total"], [r for r in sent if listed[r] != 1][:5])
    assert len(sent) >= 10
    for rid in outage_master:
        rows = requests.get(f"{gateway.url}/spend/logs", params={"request_id": rid}, headers=AUTH, timeout=10)
        assert len(rows.json()) == 1, rows.text
    assert PG_PASSWORD not in gateway.logs()


# --- Redis stopped mid-test -----------------------------------------------------------------

def test_redis_stopped_limits_hold_per_instance_and_readiness_says_so(fake, private_redis, start_gateway):
    gateway = start_gateway(config(fake, redis_url=private_redis.url), env=ENV)
    settled_readiness(gateway, lambda s, b: s == 200 and b["checks"].get("limits") == "ok", timeout=5)
    minute_left(25)
    key = generate(gateway, rpm_limit=6)
    connections = [c for pair in zip(*pin_workers(gateway, per_worker=5), strict=True) for c in pair]
    try:
        for connection in connections[:2]:                            # two of the minute's six, counted in Redis
            assert call(connection, key, chat("fast"))[0] == 200

        private_redis.stop()
        # Redis's two are unknown here: the instance's own counters let six through, exactly, over both workers
        results = release_together(connections, key, chat("slow"))
        assert statuses(results) == [200] * 6 + [429] * 4
        for status, headers, body in results:
            assert headers["x-ratelimit-limit-requests"] == "6"
            if status == 429:
                assert body["error"]["code"] == "rate_limit_exceeded"
        status, body = settled_readiness(gateway, lambda s, b: b["checks"].get("limits", "ok") != "ok", timeout=5)
        assert status == 503, body
        assert body["checks"]["limits"].startswith("unreachable since"), body
        assert "enforcing per instance" in body["checks"]["limits"], body
        assert REDIS_PASSWORD not in json.dumps(body)

        private_redis.start()                                         # empty: it kept nothing on disk
        # Without key traffic readiness must come back by itself: a load balancer that follows it sends none.
        try:
            settled_readiness(gateway, lambda s, b: s == 200 and b["checks"].get("limits") == "ok", timeout=5)
            stuck = None
        except AssertionError:
            stuck = readiness(gateway)
        time.sleep(1.1)                                               # past each worker's 1 s between Redis tries
        for connection in connections[:2]:                            # counted in the new Redis again: 1 of 6
            status, headers, body = call(connection, key, chat("fast"))
            assert status == 200, body
        assert headers["x-ratelimit-remaining-requests"] == "4", headers
        settled_readiness(gateway, lambda s, b: s == 200 and b["checks"].get("limits") == "ok", timeout=5)
    finally:
        for connection in connections:
            connection.close()
    logs = gateway.logs()
    assert logs.count("key limits are enforced per instance") == 2, logs          # once per worker and outage
    assert logs.count("key limits are exact across instances") == 2, logs
    assert REDIS_PASSWORD not in logs
    assert stuck is None, f"readiness 5 s after Redis came back, before any key traffic: {stuck}"
