"""LlamaIndex's OpenAILike LLM pointed at the gateway.

Guide: "Framework Integration → LlamaIndex (Python)". Needs `pip install llama-index-llms-openai-like`.
`OpenAILike` defaults to `is_chat_model=False`, so `.complete()` sends `POST /v1/completions`
(the legacy Completions API, which the gateway passes to the deployment's own Completions
endpoint); with `is_chat_model=True` it uses `POST /v1/chat/completions` instead.
"""
import os

from llama_index.llms.openai_like import OpenAILike

llm = OpenAILike(
    model=os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b"),
    api_key=os.getenv("LITELLM_MASTER_KEY"),
    api_base=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),  # a /v1 after the host is optional
)

response = llm.complete("What is LlamaIndex?")
print(response.text)
