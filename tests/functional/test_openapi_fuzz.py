"""Schemathesis fuzzes a real gateway against its own /openapi.json: ≥ 5,000 cases, no 5xx, every answer as described.

The gateway (2 gevent workers, a master key, the built-in `mock` model, so a
valid body gets a real 200 and streams real SSE without any network) serves
the document; schemathesis loads it over HTTP as any client would and, for
every operation, draws positive cases (bodies, query strings and paths the
document allows) and negative ones (what it forbids), sent with the master
key (in each header form), a virtual key, a key nobody issued, or none. Each
answer must pass not_a_server_error, status_code_conformance,
content_type_conformance, response_schema_conformance and
response_headers_conformance. Failures are collected rather than raised at the
first, so one run shows every distinct problem, each with a curl line.

Drawing cases costs more CPU than the gateway spends answering them, so two
client processes share the operations. Draws are seeded per operation, so a
run is reproducible; the gateway's state (keys made, blocked, regenerated;
spend rows) grows through the run, and the answers must describe it too.
"""
from __future__ import annotations

import itertools
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from .conftest import MASTER_KEY
from .gateway_process import GatewayProcess

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
MIN_CASES = 5_000
MODEL = "mock"
CLIENTS = 2

CONFIG = f"""
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: mock/shin-mock
router_settings:
  num_retries: 0
general_settings:
  master_key: {MASTER_KEY}
"""

# Cases per operation, (positive, negative): about 5,700 in all. Chat bodies are the slowest to draw (nested
# messages, tools and free-form objects: ~0.2 s each on a slow machine), so they get fewer.
CHAT = (130, 90)
MODEL_CALL = (340, 150)
OTHER = (110, 50)
BUDGET = {
    "POST /v1/chat/completions": CHAT, "POST /chat/completions": CHAT,
    "POST /v1/completions": MODEL_CALL, "POST /completions": MODEL_CALL,
    "POST /v1/embeddings": MODEL_CALL, "POST /embeddings": MODEL_CALL,
}

# Who calls: mostly the master key (in each header form), then a virtual key that may use only MODEL,
# a key nobody issued, and no key at all.
AUTH_FORMS = ["master"] * 14 + ["master-api-key", "master-x-api-key", "virtual", "virtual", "wrong", "none"]


class Run:
    """One client's cases: counts, failures, and the existing keys its cases may name."""

    def __init__(self, url: str, virtual_key: str, pool: list[str]):
        self.url = url
        self.virtual_key = virtual_key
        self.pool = pool
        self.sessions = itertools.cycle([requests.Session() for _ in range(2)])   # a connection to each worker
        self.cases = 0
        self.streams = 0
        self.statuses: dict[str, dict[int, int]] = {}
        self.failures: dict[tuple, str] = {}

    def headers(self, form: str) -> dict:
        return {"master": {"Authorization": f"Bearer {MASTER_KEY}"}, "master-api-key": {"api-key": MASTER_KEY},
                "master-x-api-key": {"x-api-key": MASTER_KEY},
                "virtual": {"Authorization": f"Bearer {self.virtual_key}"},
                "wrong": {"Authorization": "Bearer sk-nobody-issued-this-key-000000"}, "none": {}}[form]

    def aim(self, case, pick: int) -> None:
        """Point some positive cases at things that exist (the mock model, a real key): success paths run too."""
        label = case.operation.label
        body = case.body if isinstance(case.body, dict) else None
        if pick < 70 and body is not None and "model" in body:
            body["model"] = MODEL
        if pick < 50 and label.endswith("/models/{model_id}"):
            case.path_parameters["model_id"] = MODEL
        key = self.pool[pick % len(self.pool)]
        if pick < 60 and body is not None and "key" in body and label != "POST /key/generate":
            body["key"] = key
        if pick < 60 and label == "GET /key/info" and isinstance(case.query, dict):
            case.query["key"] = key
        if pick < 60 and label == "POST /key/{key}/regenerate":
            case.path_parameters["key"] = key

    def send(self, case, form: str) -> None:
        label = case.operation.label
        headers = self.headers(form)
        try:
            response = case.call(base_url=self.url, session=next(self.sessions), headers=headers, timeout=60)
        except requests.RequestException as exc:
            self.failures.setdefault((label, type(exc).__name__), f"{label}: {exc!r}\n  {case.as_curl_command()}")
            return
        self.cases += 1
        counts = self.statuses.setdefault(label, {})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        if "text/event-stream" in (response.headers.get("content-type") or [""])[0]:
            self.streams += 1
        self._follow(case, response)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            curl = case.as_curl_command(headers=headers)
            for failure in group.exceptions:
                self.failures.setdefault((label, failure.title, response.status_code),
                                         f"{label} → {response.status_code}: {failure.title}\n  {curl}\n"
                                         f"  {failure.message[:1500]}\n  body: {response.content[:600]!r}")

    def _follow(self, case, response) -> None:
        """A pool key given a new plaintext is replaced by it (the old one stopped working)."""
        if response.status_code != 200 or not case.operation.label.endswith("regenerate"):
            return
        named = case.body.get("key") if isinstance(case.body, dict) else None
        named = named or case.path_parameters.get("key")
        if named in self.pool:
            self.pool[self.pool.index(named)] = response.json()["key"]

    def result(self) -> dict:
        return {"cases": self.cases, "streams": self.streams, "statuses": self.statuses, "failures": self.failures}


def fuzz(run: Run, operation, mode: GenerationMode, examples: int) -> None:
    @seed(zlib.crc32(f"{operation.label} {mode.value}".encode()))
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), form=st.sampled_from(AUTH_FORMS),
           pick=st.integers(0, 99))
    def cases(case, form, pick):
        if mode is GenerationMode.POSITIVE:
            run.aim(case, pick)
        run.send(case, form)

    cases()


def client(url: str, virtual_key: str, pool: list[str], labels: list[str]) -> dict:
    """One client process: fuzz the operations named, in order; return what it saw."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    operations = {result.ok().label: result.ok() for result in schema.get_all_operations()}
    run = Run(url, virtual_key, pool)
    for label in labels:
        operation = operations[label]
        positive, negative = BUDGET.get(label, OTHER)
        fuzz(run, operation, GenerationMode.POSITIVE, positive)
        definition = operation.definition.raw
        if definition.get("requestBody") or definition.get("parameters"):   # something to negate
            fuzz(run, operation, GenerationMode.NEGATIVE, negative)
    return run.result()


def shares(labels: list[str], count: int) -> list[list[str]]:
    """The operations dealt to `count` clients, about even in time; model calls first, so the spend
    routes have rows to report, and key writes last."""
    cost = {label: sum(BUDGET.get(label, OTHER)) * (0.2 if BUDGET.get(label) is CHAT else 0.025)   # s per case
            for label in labels}
    dealt: list[list[str]] = [[] for _ in range(count)]
    for label in sorted(labels, key=cost.get, reverse=True):
        min(dealt, key=lambda share: sum(map(cost.get, share))).append(label)
    order = {label: (label not in BUDGET, label.startswith("POST /key/")) for label in labels}
    return [sorted(share, key=order.get) for share in dealt]


@pytest.fixture(scope="module")
def fuzzed_gateway(tmp_path_factory):
    path = tmp_path_factory.mktemp("openapi-fuzz") / "config.yaml"
    path.write_text(CONFIG)
    gateway = GatewayProcess(path, workers=2).start()
    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    try:
        virtual = requests.post(f"{gateway.url}/key/generate", headers=master, timeout=10,
                                json={"models": [MODEL], "key_alias": "openapi-fuzz-virtual"}).json()["key"]
        pool = [requests.post(f"{gateway.url}/key/generate", headers=master, json={}, timeout=10).json()["key"]
                for _ in range(3 * CLIENTS)]
        yield gateway, virtual, pool
    finally:
        gateway.stop()


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(fuzzed_gateway):
    gateway, virtual, pool = fuzzed_gateway
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", timeout=10)
    labels = [result.ok().label for result in schema.get_all_operations()]
    # Every operation but GET /openapi.json, which schemathesis leaves out when it loads the document from it
    # (tests/unit/test_openapi_document.py checks that route).
    assert len(labels) >= 27 and "POST /v1/chat/completions" in labels, labels
    plan = shares(labels, CLIENTS)
    with ProcessPoolExecutor(CLIENTS, mp_context=multiprocessing.get_context("spawn")) as executor:
        results = list(executor.map(client, [gateway.url] * CLIENTS, [virtual] * CLIENTS,
                                    [pool[i::CLIENTS] for i in range(CLIENTS)], plan))

    cases = sum(result["cases"] for result in results)
    statuses = {label: counts for result in results for label, counts in result["statuses"].items()}
    failures = {key: text for result in results for key, text in result["failures"].items()}
    summary = "\n".join(f"{label}: {dict(sorted(counts.items()))}" for label, counts in sorted(statuses.items()))
    report = "\n\n".join(list(failures.values())[:25])
    print(f"{cases} cases over {len(labels)} operations, {len(failures)} distinct failures\n{summary}")
    assert not failures, f"{len(failures)} distinct failures (first 25):\n\n{report}\n\nstatuses:\n{summary}"
    assert cases >= MIN_CASES, f"only {cases} cases ran\n{summary}"
    assert set(statuses) == set(labels), summary
    # The success paths ran, not only refusals: every model route answered 200, streams included,
    # and the refusals a key earns (no key, a key nobody issued, a virtual key on an admin route) too.
    for label in BUDGET:
        assert statuses[label].get(200), f"{label} never answered 200:\n{summary}"
    assert sum(result["streams"] for result in results) > 0, summary
    assert all(statuses[label].get(401) for label in BUDGET), summary
    assert statuses["POST /key/generate"].get(403), summary
