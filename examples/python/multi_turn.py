"""A multi-turn conversation: the whole history is sent with every request.

Guide: "Python Integration → Multi-Turn Conversation" (fixed: the guide's version did not
import `openai`; the address and key now come from the environment).
"""
import os

import openai

MODEL = os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b")


class ChatSession:
    def __init__(self, model=MODEL):
        self.client = openai.OpenAI(
            api_key=os.getenv("LITELLM_MASTER_KEY"),
            base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),
        )
        self.model = model
        self.messages = []

    def send(self, message):
        # Add the user message, then ask with the whole conversation so far
        self.messages.append({"role": "user", "content": message})
        response = self.client.chat.completions.create(model=self.model, messages=self.messages)

        # Keep the assistant's answer for the next turn
        assistant_message = response.choices[0].message.content
        self.messages.append({"role": "assistant", "content": assistant_message})
        return assistant_message


if __name__ == "__main__":
    chat = ChatSession()
    print(chat.send("Hi, I'm learning Python"))
    print(chat.send("Can you explain functions?"))
    print(chat.send("Give me an example"))
    print(f"{len(chat.messages)} messages in the conversation")
