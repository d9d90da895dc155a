"""Fallbacks, routing headers and stream failover (issue 6), counted at fake upstreams.

The x-litellm-* headers must tell the truth: the upstream requests the fakes
counted equal 1 + attempted-retries + attempted-fallbacks (every group tried
makes at least one attempt here: cooldown_time is 0, nothing ever cools).
"""
from __future__ import annotations

import re
import time

import pytest
import requests

from .router_wire import AUTH, CHAT, Fakes, chat, deployment, module_gateway, router_config, routing, sdk, send_many
from .wire import SSEResponse, assert_openai_error, assert_sse_framing

FIRST = 10000   # the weight that makes a deployment its group's first choice
STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4 "   # what a fake upstream streams
NAMES = ("primary", "backup", "lonely", "small", "big", "strict", "lenient", "cramped", "chain", "hop1", "hop2",
         "hop3", "fast", "slow", "early-500-a", "early-500-b", "early-cut-a", "early-cut-b", "late-cut", "late-backup", "one-try", "anonymous")


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    """One gateway: a group per scenario, each deployment its own fake upstream, named by its id."""
    made = Fakes()
    fakes = made.named(*NAMES)
    fakes["slow"].delay = 0.3
    config = router_config(
        deployment("primary", "primary", fakes["primary"], "status-500"),
        deployment("backup", "backup", fakes["backup"]),
        deployment("lonely", "lonely", fakes["lonely"], "status-503"),
        deployment("small", "small", fakes["small"], "status-400-context"),
        deployment("big", "big", fakes["big"]),
        deployment("strict", "strict", fakes["strict"], "status-400-policy"),
        deployment("lenient", "lenient", fakes["lenient"]),
        deployment("cramped", "cramped", fakes["cramped"], "status-400-context"),
        deployment("chain", "chain", fakes["chain"], "status-500"),
        deployment("hop1", "hop1", fakes["hop1"], "status-500"),
        deployment("hop2", "hop2", fakes["hop2"], "status-502"),
        deployment("hop3", "hop3", fakes["hop3"]),
        deployment("fast", "fast", fakes["fast"]),
        deployment("slow", "slow", fakes["slow"]),
        deployment("early-500", "early-500-a", fakes["early-500-a"], "status-500", weight=FIRST),
        deployment("early-500", "early-500-b", fakes["early-500-b"], weight=1),
        deployment("early-cut", "early-cut-a", fakes["early-cut-a"], "stream-cut-0", weight=FIRST),
        deployment("early-cut", "early-cut-b", fakes["early-cut-b"], weight=1),
        deployment("late-cut", "late-cut", fakes["late-cut"], "stream-cut-3"),
        deployment("late-backup", "late-backup", fakes["late-backup"]),
        deployment("one-try", "one-try", fakes["one-try"], "status-500", max_retries=0),
        deployment("anonymous", None, fakes["anonymous"]),
        num_retries=1, cooldown_time=0, max_fallbacks=2,
        fallbacks=[{"primary": ["backup"]}, {"small": ["backup"]}, {"strict": ["backup"]}, {"cramped": ["backup"]},
                   {"chain": ["hop1", "hop2", "hop3"]}, {"late-cut": ["late-backup"]}],
        default_fallbacks=["backup"],
        context_window_fallbacks=[{"small": ["big"]}],
        content_policy_fallbacks=[{"strict": ["lenient"]}])
    gateway = module_gateway(tmp_path_factory, "router-fallbacks", config)
    yield gateway, fakes
    gateway.stop()
    made.stop()


def counts(fakes) -> dict[str, int]:
    return {name: fake.count() for name, fake in fakes.items()}


def called(fakes, before: dict[str, int]) -> dict[str, int]:
    """Upstream requests each fake received since `before` (only those that received any)."""
    after = counts(fakes)
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def post(gateway, body: dict, stream: bool = False):
    """A chat call: the requests.Response, or for a stream the SSEResponse, read whole."""
    if not stream:
        return requests.post(f"{gateway.url}{CHAT}", json=body, headers=AUTH, timeout=20)
    with SSEResponse.open(gateway.url, CHAT, {**body, "stream": True}, AUTH) as response:
        response.read_all()
    return response


def text_of(response, stream: bool) -> str:
    if stream:
        assert_sse_framing(response)
        return "".join((e.json()["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                       for e in response.events[:-1])
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


STREAM = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


@STREAM
@pytest.mark.parametrize("group, attempts, served, retries", [
    ("primary", {"primary": 2, "backup": 1}, "backup", 1),       # `fallbacks`, after num_retries on primary
    ("lonely", {"lonely": 2, "backup": 1}, "backup", 1),         # `default_fallbacks`
    ("small", {"small": 1, "big": 1}, "big", 0),                 # `context_window_fallbacks`, not `fallbacks`
    ("strict", {"strict": 1, "lenient": 1}, "lenient", 0),       # `content_policy_fallbacks`, not `fallbacks`
    ("one-try", {"one-try": 1, "backup": 1}, "backup", 0),       # max_retries 0 caps its deployment at 1 try
])
def test_a_fallback_group_serves_and_the_headers_say_so(routed, group, attempts, served, retries, stream):
    gateway, fakes = routed
    before = counts(fakes)
    response = post(gateway, chat(group), stream)
    assert text_of(response, stream) == (STREAM_TEXT if stream else "echo: hi")
    assert called(fakes, before) == attempts
    headers = routing(response.headers)
    assert headers["x-litellm-model-group"] == served and headers["x-litellm-model-id"] == served, headers
    assert (int(headers["x-litellm-attempted-retries"]), int(headers["x-litellm-attempted-fallbacks"])) == (retries, 1)
    assert sum(attempts.values()) == 1 + retries + 1, "headers and upstream counts disagree"


def test_a_context_window_error_without_its_fallback_list_is_passed_through(routed):
    """`cramped` has only general `fallbacks`: an over-long prompt is the client's error, not an outage."""
    gateway, fakes = routed
    before = counts(fakes)
    response = post(gateway, chat("cramped"))
    assert_openai_error(response, 400, "invalid_request_error", code="context_length_exceeded")
    assert called(fakes, before) == {"cramped": 1}


def test_max_fallbacks_bounds_the_fallback_groups_tried(routed):
    """chain → hop1, hop2, hop3 with max_fallbacks 2: hop3 would answer, but is never asked."""
    gateway, fakes = routed
    before = counts(fakes)
    response = post(gateway, chat("chain"))
    assert_openai_error(response, 502, "api_error", code="upstream_error")
    assert called(fakes, before) == {"chain": 2, "hop1": 2, "hop2": 2}
    assert response.headers.get("x-litellm-attempted-fallbacks") == "2", dict(response.headers)
    assert response.headers.get("x-litellm-attempted-retries") == "3", dict(response.headers)


# --- headers on every answer --------------------------------------------------------------

@STREAM
def test_routing_headers_on_a_direct_answer(routed, stream):
    gateway, fakes = routed
    before = counts(fakes)
    response = post(gateway, chat("fast"), stream)
    assert text_of(response, stream) == (STREAM_TEXT if stream else "echo: hi")
    assert called(fakes, before) == {"fast": 1}
    headers = routing(response.headers)
    assert (headers["x-litellm-model-group"], headers["x-litellm-model-id"]) == ("fast", "fast")
    assert (headers["x-litellm-attempted-retries"], headers["x-litellm-attempted-fallbacks"]) == ("0", "0")


def test_a_deployment_without_model_info_id_has_one_stable_id_in_every_worker(routed):
    gateway, fakes = routed
    responses = send_many(gateway, [chat("anonymous")] * 12, threads=4, fresh=True)
    ids = {routing(r.headers)["x-litellm-model-id"] for r in responses}
    assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{12}", next(iter(ids))), ids


@STREAM
def test_overhead_excludes_the_upstreams_time(routed, stream):
    """The upstream takes 300 ms (to its first byte, for a stream): that is response time, not overhead."""
    gateway, _ = routed
    response = post(gateway, chat("slow"), stream)
    assert text_of(response, stream) == (STREAM_TEXT if stream else "echo: hi")
    headers = routing(response.headers)
    assert int(headers["x-litellm-response-duration-ms"]) >= 300, headers
    assert int(headers["x-litellm-overhead-duration-ms"]) < 100, headers


def test_the_openai_sdk_reads_answers_and_headers(routed):
    gateway, _ = routed
    with sdk(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(model="primary",
                                                               messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().choices[0].message.content == "echo: hi"
        assert raw.headers.get("x-litellm-model-group") == "backup"
        assert raw.headers.get("x-litellm-attempted-fallbacks") == "1"
        chunks = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}],
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == STREAM_TEXT


# --- streams: failover before the first byte, never after ---------------------------------

@pytest.mark.parametrize("group", ["early-500", "early-cut"])
def test_a_stream_failing_before_its_first_byte_fails_over_invisibly(routed, group):
    """The first deployment answers 500, or 200 and then cuts before any content: the client gets one
    whole, normal stream from the sibling."""
    gateway, fakes = routed
    before = counts(fakes)
    response = post(gateway, chat(group), stream=True)
    assert text_of(response, stream=True) == STREAM_TEXT
    assert not any(b'"error"' in e.raw for e in response.events), response.body[:500]
    assert called(fakes, before) == {f"{group}-a": 1, f"{group}-b": 1}
    headers = routing(response.headers)
    assert headers["x-litellm-model-id"] == f"{group}-b" and headers["x-litellm-attempted-retries"] == "1"


def test_a_stream_cut_after_its_first_content_is_never_retried(routed):
    """num_retries 1 and a fallback group, yet the cut stream ends with one error event and no [DONE]."""
    gateway, fakes = routed
    before = counts(fakes)
    response = post(gateway, chat("late-cut"), stream=True)
    assert response.status == 200, response.body[:300]
    assert routing(response.headers)["x-litellm-model-id"] == "late-cut"
    events = response.events
    assert events and b"[DONE]" not in response.body, response.body[-300:]
    contents = [e.json()["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert "tok0 " in contents, f"the stream was cut before its first content: {response.body[:500]!r}"
    error = events[-1].json()
    assert set(error) == {"error"} and error["error"]["type"] == "api_error", error
    assert error["error"]["code"] in ("upstream_error", "upstream_timeout"), error
    time.sleep(0.5)                  # a late retry or fallback would show up at the fakes by now
    assert called(fakes, before) == {"late-cut": 1}
