"""The guide's JavaScript OpenAI-SDK examples, run with node and the `openai` npm package.

Covered: the basic, multi-turn, streaming and error-handling examples, and the Next.js
route handler that replaces the Vercel `openai-edge` example (called with a web
`Request`, as Next.js would). Not run: the Express server (needs express and a port of
its own), the `openai-edge` example (the guide itself says it needs long-deprecated
packages) and the React component (needs a browser).

Only the host and placeholder keys are rewritten, as for the Python examples; blocks that
only define a function get a driver appended (DRIVERS). A preload module wraps `fetch`
(which the openai package uses) and records every answer, which is validated against
OpenAI's OpenAPI spec here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import pytest

from .conftest import MASTER_KEY
from .guide_doc import GUIDE, blocks, for_gateway
from .openapi_schemas import NODE_FETCH_RECORDER, check_exchange

NODE_TIMEOUT = 30
STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4"

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="node and npm are needed to run the guide's JavaScript examples")

DRIVERS = {
    "error-handling/error-handling-javascript": """
        console.log(await robustChat('Hello from the node test'));
        console.log(await robustChat('Hello again', 'no-such-model'));
    """,
    "framework-integration/vercel-ai-sdk-javascript#2": """
        const nextResponse = await POST(new Request('http://localhost:3000/api/chat', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ messages: [{ role: 'user', content: 'Stream through Next.js' }] })
        }));
        console.log(nextResponse.status, await nextResponse.text());
    """,
}

# id → (substrings stdout must contain, number of HTTP answers)
EXPECTED = {
    "openai-sdk-integration/javascript-typescript-openai-sdk": (["echo: What is the capital of France?"], 1),
    "javascript-node-js/basic-usage": (["echo: What is JavaScript?"], 1),
    "javascript-node-js/multi-turn-conversation": (["echo: Hi!", "echo: Tell me about Node.js"], 2),
    "streaming-responses/javascript-streaming": ([STREAM_TEXT], 1),
    "error-handling/error-handling-javascript": (["echo: Hello from the node test", "null"], 2),
    "framework-integration/vercel-ai-sdk-javascript#2": ([f"200 {STREAM_TEXT}"], 1),
}

NODE_BLOCKS = [b for b in blocks("javascript") if b.id in EXPECTED]


def test_every_expected_node_example_is_in_the_guide():
    assert sorted(b.id for b in NODE_BLOCKS) == sorted(EXPECTED), f"JavaScript examples of {GUIDE} changed"


@pytest.fixture(scope="module")
def node_project(tmp_path_factory):
    """A temp dir with the `openai` npm package installed."""
    project = tmp_path_factory.mktemp("node-examples")
    (project / "package.json").write_text(json.dumps({"name": "guide-examples", "private": True,
                                                      "type": "module"}))
    done = subprocess.run(["npm", "install", "openai@^6", "--no-audit", "--no-fund", "--loglevel=error"],
                          cwd=project, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"npm install openai failed:\n{done.stdout}\n{done.stderr}"
    (project / "recorder.mjs").write_text(NODE_FETCH_RECORDER)
    return project


@pytest.mark.parametrize("block", NODE_BLOCKS, ids=[b.id for b in NODE_BLOCKS])
def test_node_example_runs(block, node_project, gateway):
    name = block.id.replace("/", "--").replace("#", "-")
    script = node_project / f"{name}.mjs"
    driver = textwrap.dedent(DRIVERS.get(block.id, ""))
    script.write_text(for_gateway(block.code, gateway.url, MASTER_KEY)
                      + ("\n// --- test driver ---\n" + driver if driver else ""))
    wire_log = node_project / f"{name}.wire.jsonl"
    wire_log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    env.update({"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_BASE_URL": gateway.url,
                "WIRE_LOG": str(wire_log)})

    done = subprocess.run(["node", "--import", "./recorder.mjs", script.name], cwd=node_project, env=env,
                          capture_output=True, text=True, timeout=NODE_TIMEOUT)

    where = f"{GUIDE.name} line {block.line} ({block.id})\n--- script ---\n{script.read_text()}" \
            f"\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    assert done.returncode == 0, f"exit code {done.returncode}: {where}"
    expected_output, expected_answers = EXPECTED[block.id]
    for text in expected_output:
        assert text in done.stdout, f"{text!r} not printed: {where}"
    exchanges = [json.loads(line) for line in wire_log.read_text().splitlines()] if wire_log.exists() else []
    assert len(exchanges) == expected_answers, f"{len(exchanges)} HTTP answers, expected {expected_answers}: {where}"
    for exchange in exchanges:
        check_exchange(exchange["method"], exchange["path"], exchange["status"], exchange["content_type"],
                       exchange["body"].encode(), exchange["request_body"])
