"""`/v1/completions` on the providers that only chat (Anthropic, Gemini, Bedrock), through the real gateway.

The integration guide's LlamaIndex example (`OpenAILike.complete`) calls the legacy route:
pointed at a native provider's model, it must work as it does against an OpenAI-compatible
one. The prompt goes upstream as one user message; the answer comes back as a
`text_completion`, whole and streamed, valid by OpenAI's spec.
"""
from __future__ import annotations

import json

import openai
import pytest
import requests
from llama_index.llms.openai_like import OpenAILike

from .conftest import MASTER_KEY
from .fake_anthropic import FakeAnthropic
from .fake_bedrock import FakeBedrock
from .fake_gemini import ANSWER_TEXT, FakeGemini
from .gateway_process import GatewayProcess
from .openapi_schemas import validate

ANTHROPIC_KEY = "sk-ant-api03-legacy-key-123123"
GEMINI_KEY = "gemini-legacy-key-456456"
AWS_ID, AWS_SECRET = "AKIALEGACY000000", "legacy-secret-access-key-789789"
PROMPT = "What is LlamaIndex?"
# what each fake answers a plain prompt with
EXPECTED = {"claude": f"echo: {PROMPT}", "gemini": ANSWER_TEXT, "bedrock": f"You said: {PROMPT}"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    anthropic = FakeAnthropic(ANTHROPIC_KEY).start()
    gemini = FakeGemini(GEMINI_KEY).start()
    bedrock = FakeBedrock(AWS_ID, AWS_SECRET).start()
    path = tmp_path_factory.mktemp("legacy") / "config.yaml"
    path.write_text(f"""model_list:
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_base: "{anthropic.base_url}", api_key: {ANTHROPIC_KEY}}}
  - model_name: gemini
    litellm_params: {{model: gemini/gemini-2.0-flash, api_base: "{gemini.base_url}", api_key: {GEMINI_KEY}}}
  - model_name: bedrock
    litellm_params:
      model: bedrock/anthropic.claude-3-haiku-20240307-v1:0
      api_base: "{bedrock.base_url}"
      aws_access_key_id: {AWS_ID}
      aws_secret_access_key: {AWS_SECRET}
      aws_region_name: us-east-1
general_settings:
  master_key: {MASTER_KEY}
""")
    process = GatewayProcess(path, workers=2).start()
    yield process
    process.stop()
    for fake in (anthropic, gemini, bedrock):
        fake.stop()


@pytest.mark.parametrize("model", ["claude", "gemini", "bedrock"])
def test_the_guides_llamaindex_complete_works_on_a_native_provider(gateway, model):
    llm = OpenAILike(model=model, api_key=MASTER_KEY, api_base=f"{gateway.url}/v1")
    assert llm.complete(PROMPT).text == EXPECTED[model]
    assert "".join(chunk.delta for chunk in llm.stream_complete(PROMPT)) == EXPECTED[model]


@pytest.mark.parametrize("model", ["claude", "gemini", "bedrock"])
def test_a_legacy_completion_is_openais_shape_whole_and_streamed(gateway, model):
    answer = requests.post(f"{gateway.url}/v1/completions", timeout=30, headers={"Authorization": f"Bearer {MASTER_KEY}"},
                           json={"model": model, "prompt": PROMPT, "max_tokens": 64})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    validate("CreateCompletionResponse", body)
    assert body["object"] == "text_completion" and body["model"] == model
    assert body["choices"][0]["text"] == EXPECTED[model] and body["choices"][0]["finish_reason"] == "stop"

    streamed = requests.post(f"{gateway.url}/v1/completions", timeout=30, headers={"Authorization": f"Bearer {MASTER_KEY}"},
                             json={"model": model, "prompt": PROMPT, "stream": True,
                                   "stream_options": {"include_usage": True}})
    events = [line[6:] for line in streamed.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    for chunk in chunks:
        validate("CreateCompletionStreamChunk", chunk)
        assert chunk["object"] == "text_completion"
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == EXPECTED[model]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_the_openai_sdks_legacy_call_and_a_refused_legacy_field(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, max_retries=0)
    assert client.completions.create(model="claude", prompt=PROMPT).choices[0].text == EXPECTED["claude"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="claude", prompt=PROMPT, echo=True)
    assert caught.value.body["param"] == "echo" and caught.value.body["code"] == "unsupported_parameter"
