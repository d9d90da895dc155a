"""``--providers``: the same streaming load through one gateway, once per upstream wire format.

Why: the OpenAI-compatible adapter relays an upstream's chunks byte for byte, while a
native provider (Anthropic Messages) has every event parsed and a new OpenAI chunk built
for it. Issue 8's budget: 200 concurrent Anthropic-format streams cost the gateway no
more than ``CPU_LIMIT`` times the CPU per stream of the OpenAI-compatible relay;
Gemini and Bedrock legs are measured the same way, for the record. Both
legs run against one gateway, whose config has one model group per provider, every group
pointing at the same fake upstream (OpenAI SSE on ``/v1/chat/completions``, Anthropic
Messages SSE on ``/v1/messages``, the same number of text chunks with the same delays),
one leg after the other, so the gateway's CPU read before and after a leg is that leg's.
The client reads OpenAI SSE from the gateway in both legs and checks every stream.
"""
from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

CPU_LIMIT = 1.5  # gateway CPU per Anthropic-format stream / per OpenAI-compatible stream (issue 8)
REFERENCE, TRANSLATED = "openai", "anthropic"  # the pair the target compares


class ProviderError(ValueError):
    """A provider name that means nothing, or a provider group the gateway does not serve."""


@dataclass(frozen=True)
class Provider:
    name: str
    group: str  # the gateway's model group (what the client sends as ``model``)
    model: str  # litellm_params.model
    api_path: str  # appended to the upstream's root for api_base
    wire: str  # what the fake upstream sends to the gateway, for the table
    credentials: str = "api_key: bench-upstream-key"   # litellm_params lines, joined by "; "

    def deployment(self, host: str, upstream_port: int) -> str:
        credentials = "".join(f"      {line.strip()}\n" for line in self.credentials.split(";"))
        return (f"  - model_name: {self.group}\n    litellm_params:\n      model: {self.model}\n"
                f"      api_base: http://{host}:{upstream_port}{self.api_path}\n{credentials}")

    def describe(self, host: str, upstream_port: int) -> str:
        return f"{self.group}: {self.model} at http://{host}:{upstream_port}{self.api_path}; {self.wire}"


PROVIDERS = {
    "openai": Provider("openai", "bench-model", "openai/bench-upstream-model", "/v1",
                       "OpenAI chat.completion.chunk SSE, relayed"),
    # the Anthropic adapter posts to {api_base}/v1/messages with x-api-key and anthropic-version
    "anthropic": Provider("anthropic", "bench-anthropic", "anthropic/bench-upstream-model", "",
                          "Anthropic Messages SSE (message_start, content_block_start, ping, content_block_delta"
                          " per chunk, content_block_stop, message_delta, message_stop), translated"),
    # the Gemini adapter posts to {api_base}/models/<m>:streamGenerateContent?alt=sse with x-goog-api-key
    "gemini": Provider("gemini", "bench-gemini", "gemini/bench-upstream-model", "/v1beta",
                       "Gemini streamGenerateContent SSE (a whole GenerateContentResponse per chunk, CRLF,"
                       " no terminator), translated"),
    # the Bedrock adapter signs with SigV4 (botocore) and reads AWS event-stream frames (botocore)
    "bedrock": Provider("bedrock", "bench-bedrock", "bedrock/bench-upstream-model", "",
                        "Bedrock ConverseStream binary event-stream frames, SigV4-signed calls, translated",
                        "aws_access_key_id: AKIABENCHKEY0000; aws_secret_access_key: bench-secret-access-key;"
                        " aws_region_name: us-east-1"),
}


def parse_providers(text: str) -> list[Provider]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROVIDERS]
    if unknown or not names:
        raise ProviderError(f"unknown provider {', '.join(unknown) or '(none)'}: use a comma-separated list of"
                            f" {', '.join(PROVIDERS)}, e.g. openai,anthropic (ratios against the first)")
    if len(set(names)) != len(names):
        raise ProviderError(f"--providers names a provider twice: {text}")
    return [PROVIDERS[name] for name in names]


def providers_config(host: str, upstream_port: int, providers: list[Provider], master_key: str) -> str:
    models = "".join(p.deployment(host, upstream_port) for p in providers)
    return f"model_list:\n{models}general_settings:\n  master_key: {master_key}\n"


def probe(host: str, port: int, provider: Provider, api_key: str) -> str:
    """One non-streaming call to the provider's group; its answer's text, or ProviderError saying why not."""
    body = json.dumps({"model": provider.group, "max_tokens": 16,
                       "messages": [{"role": "user", "content": f"Probe {provider.name}"}]})
    conn = http.client.HTTPConnection(host, port, timeout=10.0)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    except OSError as exc:
        raise ProviderError(f"{provider.name}: probe failed: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200:
        raise ProviderError(f"{provider.name}: the gateway answered {response.status} to a call to"
                            f" {provider.group}: {data[:500]!r}")
    try:
        return json.loads(data)["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError) as exc:
        raise ProviderError(f"{provider.name}: not a chat.completion: {data[:500]!r}") from exc
