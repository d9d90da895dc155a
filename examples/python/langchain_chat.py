"""LangChain's ChatOpenAI pointed at the gateway.

Guide: "Framework Integration → LangChain (Python)". Needs `pip install langchain-openai`.
The messages come from `langchain_core.messages` (`langchain.schema` is gone in LangChain 1.x);
`model`, `api_key` and `base_url` are the current names of the guide's `model_name`,
`openai_api_key` and `openai_api_base` (which still work).
"""
import os

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

llm = ChatOpenAI(
    model=os.getenv("LITELLM_MODEL", "shin-llama-3-1-70b"),
    api_key=os.getenv("LITELLM_MASTER_KEY"),
    base_url=os.getenv("LITELLM_BASE_URL", "http://localhost:4000"),  # a /v1 after the host is optional
)

messages = [
    SystemMessage(content="You are a helpful assistant."),
    HumanMessage(content="What is LangChain?"),
]

response = llm.invoke(messages)
print(response.content)
