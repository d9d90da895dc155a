"""gateway/metrics.py in one process: what a finished request adds, and the series read at scrape time."""
from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import ContextLengthExceeded, UpstreamClientError, UpstreamFailed, UpstreamTimeout
from gateway.metrics import DEFINITIONS, Metrics, error_type
from gateway.store.shared_memory import SharedMemoryState
from gateway.types import Cooldown, Deployment, Trace, Usage

DEPLOYMENTS = (Deployment(id="d1", model_name="g", provider="openai", upstream_model="m1"),
               Deployment(id="d2", model_name="g", provider="openai", upstream_model="m2"))


@pytest.fixture
def state():
    return SharedMemoryState.private()


@pytest.fixture
def metrics(state):
    return Metrics(DEPLOYMENTS, state, "9.9.9")


def samples(metrics: Metrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_every_defined_series_is_exposed_with_its_labels(metrics):
    metrics.request_started()
    metrics.stream_started()
    metrics.cooldown_started("d1")
    trace = Trace(started=0.0, model_group="g", deployment_id="d1", key_label="team", first_byte=0.1,
                  usage=Usage(3, 4, 7), cost=0.5, retries=1, fallbacks=1,
                  failures=[("d2", UpstreamFailed("boom"))])
    metrics.request_finished(trace, 200, 1.0)
    exposed = {}
    for name, labels in samples(metrics):
        exposed.setdefault(name, set()).add(frozenset(k for k, _ in labels if k != "le"))
    for name, kind, labels, _ in DEFINITIONS:
        series = name + ("_count" if kind == "histogram" else "")
        assert exposed.get(series) == {frozenset(labels)}, name


def test_a_finished_request_counts_once_everywhere_it_belongs(metrics):
    metrics.request_started()
    trace = Trace(started=10.0, model_group="g", deployment_id="d1", key_label="team", first_byte=10.2,
                  upstream_seconds=0.7, usage=Usage(3, 4, 7), cost=0.25, retries=2, fallbacks=1,
                  failures=[("d2", UpstreamTimeout("slow")), ("d2", UpstreamFailed("500"))])
    metrics.request_finished(trace, 200, 11.0)
    got = samples(metrics)
    assert got[("shin_gateway_requests_total", (("model_group", "g"), ("status_code", "200")))] == 1
    assert got[("shin_gateway_request_duration_seconds_sum", (("model_group", "g"),))] == pytest.approx(1.0)
    assert got[("shin_gateway_time_to_first_token_seconds_sum", (("model_group", "g"),))] == pytest.approx(0.2)
    assert got[("shin_gateway_overhead_seconds_sum", ())] == pytest.approx(0.3)
    assert got[("shin_gateway_tokens_total", (("direction", "input"), ("model_group", "g")))] == 3
    assert got[("shin_gateway_tokens_total", (("direction", "output"), ("model_group", "g")))] == 4
    assert got[("shin_gateway_spend_total", (("model_group", "g"),))] == 0.25
    assert got[("shin_gateway_retries_total", ())] == 2 and got[("shin_gateway_fallbacks_total", ())] == 1
    assert got[("shin_gateway_upstream_errors_total", (("deployment", "d2"), ("error_type", "upstream_timeout")))] == 1
    assert got[("shin_gateway_upstream_errors_total", (("deployment", "d2"), ("error_type", "upstream_error")))] == 1
    assert got[("shin_gateway_key_requests_total", (("key_alias", "team"), ("status_code", "200")))] == 1
    assert got[("shin_gateway_key_spend_total", (("key_alias", "team"),))] == 0.25
    assert got[("shin_gateway_in_flight_requests", ())] == 0


def test_a_whole_answer_observes_no_time_to_first_token_and_a_master_call_no_key_series(metrics):
    metrics.request_started()
    metrics.request_finished(Trace(started=0.0, model_group="g", usage=Usage(1, 1, 2)), 200, 0.5)
    got = samples(metrics)
    assert got.get(("shin_gateway_time_to_first_token_seconds_count", (("model_group", "g"),)), 0) == 0
    assert not [name for name, _ in got if name.startswith("shin_gateway_key_")]


def test_cooling_and_in_flight_deployments_are_read_at_scrape_time(metrics, state):
    state.begin("d2")
    state.cool("d1", Cooldown(until=time.time() + 60, kind="failure"))
    got = samples(metrics)
    assert got[("shin_gateway_deployment_cooling", (("deployment", "d1"), ("model_group", "g")))] == 1
    assert got[("shin_gateway_deployment_cooling", (("deployment", "d2"), ("model_group", "g")))] == 0
    assert got[("shin_gateway_deployment_in_flight", (("deployment", "d2"), ("model_group", "g")))] == 1
    assert got[("shin_gateway_build_info", (("version", "9.9.9"),))] == 1


@pytest.mark.parametrize("error, expected", [
    (UpstreamFailed("x"), "upstream_error"), (UpstreamTimeout("x"), "upstream_timeout"),
    (ContextLengthExceeded("x"), "context_length_exceeded"),
    (UpstreamClientError("x", status=422, code="some_vendor_code"), "client_error"),
    (UpstreamClientError("x", status=400, code=None), "client_error"),
])
def test_error_types_are_a_bounded_set(error, expected):
    assert error_type(error.code, error.status) == expected
