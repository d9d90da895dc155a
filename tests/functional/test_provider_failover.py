"""Native providers' failures drive the router as the contract says, across providers and both workers.

One gateway (2 gevent workers) in front of loopback Anthropic, Gemini and Bedrock fakes. Groups mix
providers: an overloaded Anthropic (529) is retried on a Gemini sibling and cools after
`allowed_fails`; a Gemini key refused with 400 API_KEY_INVALID cools at once; a Bedrock
ThrottlingException reaches the client as 429 with Retry-After; an Anthropic "prompt is too
long" fires the context-window fallback to Bedrock. Counted at the fakes, not inferred.
"""
from __future__ import annotations

import pytest
import requests

from .conftest import MASTER_KEY
from .fake_anthropic import FakeAnthropic
from .fake_bedrock import FakeBedrock
from .fake_gemini import FakeGemini
from .gateway_process import GatewayProcess

ANTHROPIC_KEY = "sk-ant-api03-failover-key-000111"
GEMINI_KEY = "gemini-failover-key-222333"
AWS_ID, AWS_SECRET = "AKIAFAILOVER0000", "failover-secret-access-key-444555"
HEADERS = {"Authorization": f"Bearer {MASTER_KEY}"}
ALLOWED_FAILS = 2


@pytest.fixture(scope="module")
def fakes():
    started = (FakeAnthropic(ANTHROPIC_KEY).start(), FakeGemini(GEMINI_KEY).start(),
               FakeBedrock(AWS_ID, AWS_SECRET).start())
    yield started
    for fake in started:
        fake.stop()


@pytest.fixture(scope="module")
def gateway(fakes, tmp_path_factory):
    anthropic, gemini, bedrock = fakes

    def deployment(group, model, id_, weight=1):
        provider = model.partition("/")[0]
        credentials = {"anthropic": f"api_base: {anthropic.base_url}\n      api_key: os.environ/ANT_KEY",
                       "gemini": f"api_base: {gemini.base_url}\n      api_key: os.environ/GEM_KEY",
                       "bedrock": f"api_base: {bedrock.base_url}\n      aws_access_key_id: {AWS_ID}\n"
                                  f"      aws_secret_access_key: os.environ/AWS_SECRET\n"
                                  f"      aws_region_name: us-east-1"}[provider]
        if id_ == "gem-bad-key":
            credentials = f"api_base: {gemini.base_url}\n      api_key: wrong-gemini-key-999"
        return f"""
  - model_name: {group}
    litellm_params:
      model: {model}
      {credentials}
      weight: {weight}
    model_info: {{id: {id_}}}"""
    # the failing deployments weigh 20 to 1, so that they are surely picked before they cool
    entries = [deployment("mixed", "anthropic/status-529", "ant-overloaded", weight=20),
               deployment("mixed", "gemini/gemini-2.0-flash", "gem-ok"),
               deployment("keyed", "gemini/gemini-2.0-flash", "gem-bad-key", weight=20),
               deployment("keyed", "bedrock/anthropic.claude-3-haiku-20240307-v1:0", "bed-ok"),
               deployment("throttled", "bedrock/error.ThrottlingException", "bed-throttled"),
               deployment("long", "anthropic/status-400-context", "ant-context"),
               deployment("bigger", "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "bed-bigger")]
    path = tmp_path_factory.mktemp("failover") / "config.yaml"
    path.write_text(f"""model_list:{"".join(entries)}
router_settings:
  num_retries: 2
  allowed_fails: {ALLOWED_FAILS}
  cooldown_time: 60
  context_window_fallbacks: [{{long: [bigger]}}]
general_settings:
  master_key: {MASTER_KEY}
""")
    process = GatewayProcess(path, workers=2, env={"ANT_KEY": ANTHROPIC_KEY, "GEM_KEY": GEMINI_KEY,
                                                   "AWS_SECRET": AWS_SECRET}).start()
    yield process
    process.stop()
    logs = process.logs()
    for secret in (ANTHROPIC_KEY, GEMINI_KEY, AWS_SECRET, "wrong-gemini-key-999"):
        assert secret not in logs


def _chat(gateway, model, **body):
    return requests.post(f"{gateway.url}/v1/chat/completions", headers=HEADERS, timeout=30,
                         json={"model": model, "messages": [{"role": "user", "content": "hello"}], **body})


def _count(fake, model: str) -> int:
    with fake.lock:
        return sum(1 for r in fake.requests if (r.get("body") or {}).get("model") == model)


@pytest.mark.parametrize("stream", [False, True])
def test_an_overloaded_anthropic_is_retried_on_a_gemini_sibling_and_cools_after_allowed_fails(gateway, fakes,
                                                                                           stream):
    anthropic = fakes[0]
    for _ in range(12):
        answer = _chat(gateway, "mixed", stream=stream)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-litellm-model-id"] == "gem-ok"
        if stream:
            assert answer.text.rstrip().endswith("data: [DONE]")
    # every 529 counts towards the cooldown that both workers share: over all the calls of this test
    # (JSON and streams), the overloaded deployment was tried, and no more than allowed_fails times
    assert 1 <= _count(anthropic, "status-529") <= ALLOWED_FAILS


def test_a_gemini_key_refused_as_api_key_invalid_cools_at_once_and_bedrock_serves(gateway, fakes):
    gemini = fakes[1]
    for _ in range(8):
        answer = _chat(gateway, "keyed")
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-litellm-model-id"] == "bed-ok"
        assert "wrong-gemini-key-999" not in answer.text
    with gemini.lock:
        refused = [r for r in gemini.requests if r.get("model") == "gemini-2.0-flash"
                   and r.get("headers", {}).get("x-goog-api-key") == "wrong-gemini-key-999"]
    assert len(refused) == 1      # an upstream credential failure cools the deployment at once, in both workers


def test_a_bedrock_throttle_is_a_429_with_retry_after(gateway):
    answer = _chat(gateway, "throttled")
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "rate_limit_exceeded" and int(answer.headers["Retry-After"]) >= 1


def test_an_anthropic_context_overflow_fires_the_context_window_fallback_to_bedrock(gateway):
    answer = _chat(gateway, "long")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-litellm-model-group"] == "bigger"
    assert answer.headers["x-litellm-model-id"] == "bed-bigger"
    assert answer.headers["x-litellm-attempted-fallbacks"] == "1"
