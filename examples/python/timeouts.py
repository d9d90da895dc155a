"""Timeouts: one for the client, and a different one for a single request.

Guide: "Best Practices → 2. Timeout Configuration" (fixed: the guide's snippet used an
undefined `client` and `message`). A request that takes longer raises
`openai.APITimeoutError` (after the SDK's own retries, `max_retries`, default 2).
Set LITELLM_TIMEOUT to change the per-request timeout (seconds).
"""
import os

import openai

client = openai.OpenAI(
    api_key=os.getenv("LITELLM_MASTER_KEY"),
    base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
    timeout=120.0,  # every request of this client
)
MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")
message = "What is Python?"

try:
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
        timeout=float(os.getenv("LITELLM_TIMEOUT", "60")),  # this request only
    )
    print(response.choices[0].message.content)
except openai.APITimeoutError:
    print("The request timed out")
