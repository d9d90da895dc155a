"""Print the answer as it is generated (server-sent events through the gateway).

Guide: "Streaming Responses → Python Streaming".
"""
import os

import openai

client = openai.OpenAI(
    api_key=os.getenv("LITELLM_MASTER_KEY"),
    base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
)
MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")


def stream_chat(message):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
        stream=True,
    )

    for chunk in stream:
        # a chunk may carry no choice (the usage chunk of `stream_options.include_usage`)
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()  # New line at end


if __name__ == "__main__":
    stream_chat("Tell me a long story")
