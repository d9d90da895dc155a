"""Send a batch of independent questions concurrently and collect the answers in order.

Guide: "Best Practices → 4. Request Batching" (fixed: the guide's version did not import
`openai`, and never printed its results).
"""
import asyncio
import os

import openai

MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")


async def batch_requests(messages, model=MODEL):
    client = openai.AsyncOpenAI(
        api_key=os.getenv("LITELLM_MASTER_KEY"),
        base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
    )

    tasks = [
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": msg}],
        )
        for msg in messages
    ]

    responses = await asyncio.gather(*tasks)
    return [r.choices[0].message.content for r in responses]


if __name__ == "__main__":
    messages = ["What is AI?", "What is ML?", "What is DL?"]
    results = asyncio.run(batch_requests(messages))
    for result in results:
        print(result)
