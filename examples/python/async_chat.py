"""Concurrent requests with the async client.

Guide: "Python Integration → Async Usage". The three questions are in flight at once.
"""
import asyncio
import os

import openai

client = openai.AsyncOpenAI(
    api_key=os.getenv("LITELLM_MASTER_KEY"),
    base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
)
MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")


async def chat_async(message):
    response = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
    )
    return response.choices[0].message.content


async def main():
    tasks = [
        chat_async("What is AI?"),
        chat_async("What is ML?"),
        chat_async("What is DL?"),
    ]
    results = await asyncio.gather(*tasks)
    for result in results:
        print(result)


if __name__ == "__main__":
    asyncio.run(main())
