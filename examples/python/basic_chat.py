"""Basic chat completion through the gateway with the OpenAI Python SDK.

Guide: "OpenAI SDK Integration → Python" and "Python Integration → Basic Usage".
The gateway is a drop-in replacement for OpenAI's API: only `base_url` and `api_key` change.

    LITELLM_MASTER_KEY=sk-... python basic_chat.py
"""
import os

import openai

client = openai.OpenAI(
    api_key=os.getenv("LITELLM_MASTER_KEY"),
    base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
)
MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")  # any model_name of your config


def chat(message, model=MODEL):
    """Send one chat message and return the answer's text."""
    response = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": message},
        ],
    )
    return response.choices[0].message.content


if __name__ == "__main__":
    print(chat("What is the capital of France?"))
