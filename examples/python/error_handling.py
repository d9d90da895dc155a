"""Retry what is worth retrying: rate limits and server errors, with exponential backoff.

Guide: "Python Integration → With Error Handling". Fixed here:
- the guide's version did not import `time`;
- it retried every API error, also those a retry cannot fix (a wrong model name: 404, a bad
  key: 401, a bad request: 400); now only 429, 5xx and connection errors are retried;
- the SDK already retries 429 and 5xx twice on its own (`max_retries=2`), so each of the
  guide's attempts could be three requests: the client is made with `max_retries=0` since
  this function does the retrying.

Try `LITELLM_MODEL=no-such-model python error_handling.py` to see a client error.
"""
import os
import time

import openai

MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")


def safe_chat(message, model=MODEL, max_retries=3):
    client = openai.OpenAI(
        api_key=os.getenv("LITELLM_MASTER_KEY"),
        base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
        max_retries=0,  # this function does the retrying
    )

    for attempt in range(max_retries):
        try:
            response = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": message}],
            )
            return response.choices[0].message.content

        except openai.RateLimitError:
            print(f"Rate limit hit, retrying... ({attempt + 1}/{max_retries})")

        except openai.APIStatusError as e:
            print(f"API error: {e}")
            if e.status_code < 500:  # a client error: retrying does not help
                raise

        except openai.APIConnectionError as e:
            print(f"Connection error: {e}")

        if attempt < max_retries - 1:
            time.sleep(2 ** attempt)  # exponential backoff: 1 s, 2 s, ...

    raise Exception("Max retries exceeded")


if __name__ == "__main__":
    try:
        print(safe_chat("Tell me about AI"))
    except Exception as e:
        print(f"Gave up: {e}")
