"""Log each request and answer (sizes, not keys) with the standard logging module.

Guide: "Best Practices → 5. Logging" (fixed: the guide's version used an undefined `client`).
The log lines go to stderr, the answer to stdout.
"""
import logging
import os

import openai

logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)

client = openai.OpenAI(
    api_key=os.getenv("LITELLM_MASTER_KEY"),
    base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
)
MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")


def chat_with_logging(message):
    logger.info(f"Sending message: {message[:50]}...")

    try:
        response = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": message}],
        )
        result = response.choices[0].message.content
        logger.info(f"Received response: {len(result)} characters")
        return result
    except Exception as e:
        logger.error(f"Error: {e}")
        raise


if __name__ == "__main__":
    print(chat_with_logging("Hello logging"))
