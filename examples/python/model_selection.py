"""Pick a model group per task: small and fast, large, code-specialised, or balanced.

Guide: "Best Practices → 3. Model Selection", with a loop that asks each of them once.
The names are those of the shipped config/config.yaml; the balanced default can be changed
with LITELLM_MODEL.
"""
import os

import openai

client = openai.OpenAI(
    api_key=os.getenv("LITELLM_MASTER_KEY"),
    base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
)


def get_model_for_task(task_type):
    if task_type == "simple":
        return "shin-llama-3-1-8b"  # Fast, cheap
    elif task_type == "complex":
        return "shin-llama-3-1-405b"  # Powerful
    elif task_type == "code":
        return "otsu-qwen3-coder-plus"  # Specialized
    else:
        return os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")  # Balanced


if __name__ == "__main__":
    for task in ("simple", "complex", "code", "chat"):
        model = get_model_for_task(task)
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"a {task} task"}])
        print(f"{task}: {model}: {reply.choices[0].message.content}")
