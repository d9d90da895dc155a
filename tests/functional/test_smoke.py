"""The gateway comes up under gunicorn + gevent and relays one call to the fake upstream."""
import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY


def test_chat_completion_relayed(gateway, upstream, auth_headers):
    response = requests.post(f"{gateway.url}/v1/chat/completions", headers=auth_headers, timeout=10,
                             json={"model": "shin-llama-3-1-70b", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "shin-llama-3-1-70b"
    assert body["choices"][0]["message"]["content"] == "echo: hi"
    seen = upstream.last_request("meta-llama/Llama-3.1-70B-Instruct")
    assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert MASTER_KEY not in seen["raw"].decode() + str(seen["headers"])
