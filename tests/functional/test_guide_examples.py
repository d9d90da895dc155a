"""Every ```python example of docs/api-integration-guide.md runs, as written, against the gateway.

Only the host (`http://localhost:4000` → the test gateway, a `/v1` after it stays) and the
placeholder keys are rewritten; examples that read `LITELLM_MASTER_KEY` / `LITELLM_BASE_URL`
get them from the environment. Each block runs in its own subprocess with the venv's
python. Blocks that only define something get a small driver appended (DRIVERS) that calls
it the way a reader would. A `sitecustomize` in the subprocess records every HTTP answer the
example received (at httpx's transport, unchanged) and each one is validated against OpenAI's
OpenAPI spec here.

All blocks are started at once (module fixture) and each test waits for its own, which keeps
the module to a few seconds; each has a hard timeout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import MASTER_KEY
from .guide_doc import GUIDE, blocks, for_gateway
from .openapi_schemas import PYTHON_HTTPX_RECORDER, check_exchange

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT = 60.0
STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4"   # what the fake upstream streams for an ordinary model

# Appended to blocks that define functions/objects without using them (or use them
# without showing a result): call them as a reader of that section would.
DRIVERS = {
    "error-handling/comprehensive-error-handling-python": """
        print(robust_chat("Hello from the guide test"))
        print(robust_chat("Hello again", model="no-such-model"))
    """,
    "best-practices/2-timeout-configuration": """
        print(response.choices[0].message.content)
    """,
    "best-practices/3-model-selection": """
        import os as _os
        import openai as _openai
        _client = _openai.OpenAI(api_key=_os.environ["LITELLM_MASTER_KEY"], base_url=_os.environ["LITELLM_BASE_URL"])
        for _task in ("simple", "complex", "code", "chat"):
            _model = get_model_for_task(_task)
            _reply = _client.chat.completions.create(
                model=_model, messages=[{"role": "user", "content": f"a {_task} task"}])
            print(_task, _model, _reply.model, _reply.choices[0].message.content)
    """,
    "best-practices/4-request-batching": """
        print(results)
    """,
    "best-practices/5-logging": """
        print(chat_with_logging("Hello logging"))
    """,
}

# What each example must print (stdout), and how many HTTP answers it must receive.
EXPECTED = {
    "openai-sdk-integration/python-openai-sdk": (["echo: What is the capital of France?"], 1),
    "python-integration/basic-usage": (["echo: What is Python?"], 1),
    "python-integration/multi-turn-conversation": (
        ["echo: Hi, I'm learning Python", "echo: Can you explain functions?", "echo: Give me an example"], 3),
    "python-integration/async-usage": (["echo: What is AI?", "echo: What is ML?", "echo: What is DL?"], 3),
    "python-integration/with-error-handling": (["echo: Tell me about AI"], 1),
    "framework-integration/langchain-python": (["echo: What is LangChain?"], 1),
    "framework-integration/llamaindex-python": (["echo: What is LlamaIndex?"], 1),
    "streaming-responses/python-streaming": ([STREAM_TEXT], 1),
    "error-handling/comprehensive-error-handling-python": (
        ["echo: Hello from the guide test", "API error: Error code: 404", "None"], 2),
    # Shows where a key comes from and makes no request: it must run, nothing more to see.
    "best-practices/1-api-key-management": ([], 0),
    "best-practices/2-timeout-configuration": (["echo: What is Python?"], 1),
    "best-practices/3-model-selection": ([
        "simple shin-llama-3-1-8b shin-llama-3-1-8b echo: a simple task",
        "complex shin-llama-3-1-405b shin-llama-3-1-405b echo: a complex task",
        "code otsu-qwen3-coder-plus otsu-qwen3-coder-plus echo: a code task",
        "chat shin-llama-3-1-70b shin-llama-3-1-70b echo: a chat task"], 4),
    "best-practices/4-request-batching": (["echo: What is AI?", "echo: What is ML?", "echo: What is DL?"], 3),
    "best-practices/5-logging": (["echo: Hello logging"], 1),
}


PYTHON_BLOCKS = blocks("python")


def test_every_python_block_has_an_expectation():
    """A new or renamed example in the guide must be given its expected output here."""
    assert PYTHON_BLOCKS, f"no python blocks found in {GUIDE}"
    assert sorted(b.id for b in PYTHON_BLOCKS) == sorted(EXPECTED)
    assert set(DRIVERS) <= set(EXPECTED)


class Run:
    def __init__(self, block, gateway_url: str, workdir: Path, recorder_dir: Path):
        self.block = block
        self.workdir = workdir
        self.script = workdir / "example.py"
        driver = textwrap.dedent(DRIVERS.get(block.id, ""))
        self.script.write_text(for_gateway(block.code, gateway_url, MASTER_KEY)
                               + ("\n# --- test driver ---\n" + driver if driver else ""))
        self.wire_log = workdir / "wire.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
        env.update({"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_BASE_URL": gateway_url,
                    "PYTHONPATH": str(recorder_dir), "RECORDER_SCHEMAS": str(HERE / "openapi_schemas.py"),
                    "WIRE_LOG": str(self.wire_log), "PYTHONUNBUFFERED": "1"})
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(self.script)], cwd=workdir, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> tuple[int, str, str]:
        remaining = max(1.0, RUN_TIMEOUT - (time.monotonic() - self.started))
        try:
            stdout, stderr = self.proc.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            pytest.fail(f"{self.block.id} did not finish in {RUN_TIMEOUT}s\nstdout:\n{stdout}\nstderr:\n{stderr}")
        return self.proc.returncode, stdout, stderr

    def exchanges(self) -> list[dict]:
        if not self.wire_log.exists():
            return []
        return [json.loads(line) for line in self.wire_log.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(gateway, tmp_path_factory):
    recorder_dir = tmp_path_factory.mktemp("guide-recorder")
    (recorder_dir / "sitecustomize.py").write_text(PYTHON_HTTPX_RECORDER)
    started = {}
    for block in PYTHON_BLOCKS:
        workdir = tmp_path_factory.mktemp("guide-" + block.id.replace("/", "-").replace("#", "-"))
        started[block.id] = Run(block, gateway.url, workdir, recorder_dir)
    yield started
    for run in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_example_runs(block, runs):
    run = runs[block.id]
    code, stdout, stderr = run.result()
    where = f"{GUIDE.name} line {block.line} ({block.id})\n--- script ---\n{run.script.read_text()}" \
            f"\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    assert code == 0, f"exit code {code}: {where}"
    expected_output, expected_answers = EXPECTED[block.id]
    for text in expected_output:
        assert text in stdout, f"{text!r} not printed: {where}"

    exchanges = run.exchanges()
    assert len(exchanges) == expected_answers, f"{len(exchanges)} HTTP answers, expected {expected_answers}: {where}"
    for exchange in exchanges:
        check_exchange(exchange["method"], exchange["path"], exchange["status"], exchange["content_type"],
                       exchange["body"].encode(), exchange["request_body"])
        assert not exchange["path"].startswith("/v1/v1"), exchange["path"]
