"""Every error class of the OpenAI SDK, each handled the way it should be.

Guide: "Error Handling → Comprehensive Error Handling (Python)". Fixed here:
- the guide read `e.status_code` on any `APIError`, but only `APIStatusError` (an HTTP answer
  with an error status) has one: the other `APIError`s would raise AttributeError; the
  status errors are now caught as `APIStatusError`;
- it slept after the last attempt too, and the SDK's own retries (`max_retries=2`) came on
  top of these: the client is made with `max_retries=0`.

It asks once with a model the gateway serves and once with one it does not serve (a 404,
a client error: not retried).
"""
import os
import time

import openai
from openai import APIConnectionError, APIStatusError, AuthenticationError, RateLimitError

MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")


def robust_chat(message, model=MODEL):
    client = openai.OpenAI(
        api_key=os.getenv("LITELLM_MASTER_KEY"),
        base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
        max_retries=0,  # this function does the retrying
    )

    max_retries = 3
    base_delay = 1

    for attempt in range(max_retries):
        last_attempt = attempt == max_retries - 1
        try:
            response = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": message}],
                timeout=60.0,
            )
            return response.choices[0].message.content

        except AuthenticationError as e:
            print(f"Authentication failed: {e}")
            return None  # Don't retry auth errors

        except RateLimitError:
            print("Rate limit hit.")

        except APIConnectionError as e:  # also APITimeoutError
            print(f"Connection error: {e}")

        except APIStatusError as e:
            print(f"API error: {e}")
            if e.status_code < 500:  # Client error, don't retry
                return None

        except Exception as e:
            print(f"Unexpected error: {e}")
            return None

        if not last_attempt:
            delay = base_delay * (2 ** attempt)
            print(f"Waiting {delay}s...")
            time.sleep(delay)

    print("Max retries exceeded")
    return None


if __name__ == "__main__":
    print(robust_chat("Hello from the examples"))
    print(robust_chat("Hello again", model="no-such-model"))
