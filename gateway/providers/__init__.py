"""Provider adapters, registered by the prefix of `litellm_params.model`.

Adding a provider is one module and one line here; the router and the API
never branch on provider. Adapters are named as "module:Class" and imported
only when a config uses them, so the gunicorn master can validate a config
without importing requests/ssl before gevent has patched the workers.
"""
from __future__ import annotations

from importlib import import_module

# LiteLLM prefixes of OpenAI-compatible servers, with their documented base URL.
OPENAI_COMPATIBLE_BASES = {
    "openai": "https://api.openai.com/v1",
    "together_ai": "https://api.together.xyz/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "mistral": "https://api.mistral.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "dashscope": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    "hosted_vllm": None,  # no default: api_base is required
}

# Providers whose base URL is the customer's own (an Azure resource, a vLLM host): api_base is required.
NEEDS_API_BASE = frozenset([*(prefix for prefix, base in OPENAI_COMPATIBLE_BASES.items() if base is None), "azure"])

ADAPTERS = {
    **{prefix: "openai_compat:OpenAICompatibleAdapter" for prefix in OPENAI_COMPATIBLE_BASES},
    "azure": "azure:AzureAdapter",
    "anthropic": "anthropic:AnthropicAdapter",
    "gemini": "gemini:GeminiAdapter",
    "bedrock": "bedrock:BedrockAdapter",
    "mock": "mock:MockAdapter",
}


def load_config(path=None, **kwargs):
    """The config, validated against the providers registered here (what check-config runs)."""
    from ..settings import load_settings
    return load_settings(path, providers=ADAPTERS, needs_api_base=NEEDS_API_BASE, **kwargs)


def adapter_class(prefix: str):
    module, _, name = ADAPTERS[prefix].partition(":")
    return getattr(import_module(f"{__name__}.{module}"), name)


def build_adapters(deployments, *, pool_maxsize: int, redactor) -> dict:
    """One adapter instance per provider prefix in use, keyed by that prefix."""
    by_provider: dict[str, list] = {}
    for deployment in deployments:
        by_provider.setdefault(deployment.provider, []).append(deployment)
    return {provider: adapter_class(provider)(group, pool_maxsize=pool_maxsize, redactor=redactor)
            for provider, group in by_provider.items()}
