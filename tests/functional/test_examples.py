"""Every file in examples/ runs against a real gateway, as a user would run it.

The gateway (2 workers) serves the guide's model names from the fake upstream, which echoes
the last user message ("echo: ...") or streams "tok0 tok1 ...", so each example's output
says that its request went through. Python examples run in place with the venv's python (the
`openai`, LangChain and LlamaIndex packages of the test extras); node examples run from a
copy of examples/node with its package.json installed by npm into a temp dir; the React page
is built with its own `npm run build` (esbuild), served from another origin than the gateway
and driven in headless Chromium (examples_browser.py).

Besides the recorder hooks, each example gets only the environment the README names (LITELLM_BASE_URL,
LITELLM_MASTER_KEY; LITELLM_MODEL, LITELLM_TIMEOUT, PORT for some). Every HTTP answer an example receives is
recorded at its HTTP client (httpx / fetch) and validated against OpenAI's OpenAPI spec.

All Python runs are started at once, as are the node runs once npm is done (both npm installs
start first), and each test waits for its own run: the module takes a few seconds more than
its slowest example. `test_every_file_in_examples_is_run` fails for a file in examples/ that
no test runs and that NOT_RUN_DIRECTLY does not explain.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .examples_browser import DRIVER_JS, PLAYWRIGHT_CORE, PageServer, config_js
from .gateway_process import GatewayProcess, free_port
from .openapi_schemas import NODE_FETCH_RECORDER, PYTHON_HTTPX_RECORDER, check_exchange

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples"
RUN_TIMEOUT = 120.0
NPM_TIMEOUT = 300.0
STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4"                     # a stream of the echoing models
PAGE_STREAM = "".join(f"tok{i} " for i in range(8))            # what `slow-stream` streams, 100 ms apart
PAGE_MESSAGE = "Hello from headless Chromium"

NODE = shutil.which("node")
NPM = shutil.which("npm")
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
needs_node = pytest.mark.skipif(not (NODE and NPM), reason="node and npm are needed to run examples/node")
needs_browser = pytest.mark.skipif(not (NODE and NPM and CHROMIUM),
                                   reason="node, npm and chromium are needed to run examples/react-streaming")


@dataclass(frozen=True)
class Example:
    id: str
    file: str                          # under examples/
    stdout: tuple[str, ...]            # each must be printed
    answers: int                       # HTTP answers it must receive from the gateway
    env: dict = field(default_factory=dict)
    stderr: tuple[str, ...] = ()


PYTHON = [
    Example("basic_chat", "python/basic_chat.py", ("echo: What is the capital of France?",), 1),
    Example("multi_turn", "python/multi_turn.py",
            ("echo: Hi, I'm learning Python", "echo: Can you explain functions?", "echo: Give me an example",
             "6 messages in the conversation"), 3),
    Example("async_chat", "python/async_chat.py", ("echo: What is AI?", "echo: What is ML?", "echo: What is DL?"), 3),
    Example("error_handling", "python/error_handling.py", ("echo: Tell me about AI",), 1),
    # A 5xx is retried (3 attempts, 1 s and 2 s apart), then it gives up.
    Example("error_handling-5xx", "python/error_handling.py",
            ("API error: Error code: 502", "Gave up: Max retries exceeded"), 3, {"LITELLM_MODEL": "fail-503"}),
    # A client error is not: exactly one answer.
    Example("error_handling-404", "python/error_handling.py",
            ("API error: Error code: 404", "Gave up: Error code: 404"), 1, {"LITELLM_MODEL": "no-such-model"}),
    Example("error_handling_comprehensive", "python/error_handling_comprehensive.py",
            ("echo: Hello from the examples", "API error: Error code: 404", "None"), 2),
    Example("streaming", "python/streaming.py", (STREAM_TEXT,), 1),
    Example("langchain_chat", "python/langchain_chat.py", ("echo: What is LangChain?",), 1),
    Example("llamaindex_complete", "python/llamaindex_complete.py", ("echo: What is LlamaIndex?",), 1),
    Example("model_selection", "python/model_selection.py",
            ("simple: shin-llama-3-1-8b: echo: a simple task", "complex: shin-llama-3-1-405b: echo: a complex task",
             "code: otsu-qwen3-coder-plus: echo: a code task", "chat: shin-llama-3-1-70b: echo: a chat task"), 4),
    Example("batching", "python/batching.py", ("echo: What is AI?", "echo: What is ML?", "echo: What is DL?"), 3),
    Example("logging_chat", "python/logging_chat.py", ("echo: Hello logging",), 1,
            stderr=("Sending message: Hello logging...", "Received response: 19 characters")),
    Example("timeouts", "python/timeouts.py", ("echo: What is Python?",), 1),
    # The upstream takes 3 s, the request may take 0.5 s: APITimeoutError after the SDK's own retries.
    Example("timeouts-expired", "python/timeouts.py", ("The request timed out",), 0,
            {"LITELLM_MODEL": "slow-answer", "LITELLM_TIMEOUT": "0.5"}),
]

NODE_RUNS = [
    Example("basic", "node/basic.mjs", ("echo: What is JavaScript?",), 1),
    Example("multi-turn", "node/multi-turn.mjs",
            ("echo: Hi!", "echo: Tell me about Node.js", "4 messages in the conversation"), 2),
    Example("streaming", "node/streaming.mjs", (STREAM_TEXT,), 1),
    Example("error-handling", "node/error-handling.mjs", ("echo: Hello from the examples", "null"), 2,
            stderr=("Error: 404 The model `no-such-model` does not exist",)),
    Example("error-handling-5xx", "node/error-handling.mjs",
            ("Error 502. Waiting 1000ms...", "Error 502. Waiting 2000ms..."), 4, {"LITELLM_MODEL": "fail-503"},
            stderr=("Error: 502 the upstream failed with HTTP 503",)),
    Example("call-next-route", "node/call-next-route.mjs", ("200 text/plain; charset=utf-8", STREAM_TEXT), 1),
]

EXPRESS = "node/express-server.mjs"                     # test_express_server
REACT_PAGE = ("react-streaming/package.json", "react-streaming/index.html", "react-streaming/config.js",
              "react-streaming/src/main.jsx", "react-streaming/src/ChatComponent.jsx")   # test_react_page

NOT_RUN_DIRECTLY = {
    "README.md": "how to run the examples; the commands in it are the ones these tests use",
    ".gitignore": "keeps npm's node_modules and lock files out of the repository",
    "node/package.json": "the node examples' dependencies: every node run uses the install made from it",
    "node/next-route.mjs": "a Next.js route module: call-next-route.mjs imports it and calls its POST",
}
IGNORED = {"node_modules", "dist", "__pycache__", "package-lock.json"}   # as examples/.gitignore

GATEWAY_MODELS = {   # client-facing name → fake upstream model (which picks its behaviour)
    "shin-llama-3-1-70b": "meta-llama/Llama-3.1-70B-Instruct",
    "shin-llama-3-1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "shin-llama-3-1-405b": "meta-llama/Llama-3.1-405B-Instruct",
    "otsu-qwen3-coder-plus": "qwen3-coder-plus",
    "fail-503": "status-503",
    "slow-answer": "hang-3",
    "slow-stream": "slow-8-100",
}



def example_files() -> set[str]:
    return {path.relative_to(EXAMPLES).as_posix() for path in EXAMPLES.rglob("*")
            if path.is_file() and not IGNORED & set(path.relative_to(EXAMPLES).parts)}


def test_every_file_in_examples_is_run():
    """A new example must be given a run here (or a reason why it is not run by itself)."""
    covered = {e.file for e in PYTHON + NODE_RUNS} | {EXPRESS, *REACT_PAGE} | set(NOT_RUN_DIRECTLY)
    files = example_files()
    assert files, f"nothing found in {EXAMPLES}"
    assert not files - covered, f"files in examples/ that no test runs: {sorted(files - covered)}"
    assert not covered - files, f"listed here but not in examples/: {sorted(covered - files)}"


def example_env(gateway_url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    env.update({"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_BASE_URL": gateway_url}, **extra)
    return env


def read_wire_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check_wire(exchanges: list[dict]) -> None:
    for exchange in exchanges:
        check_exchange(exchange["method"], exchange["path"], exchange["status"], exchange["content_type"],
                       exchange["body"].encode(), exchange["request_body"])


class Run:
    """One example process, started now, waited for by its test."""

    def __init__(self, example: Example, argv: list[str], cwd: Path, env: dict, wire_log: Path):
        self.example, self.wire_log = example, wire_log
        wire_log.unlink(missing_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def check(self) -> None:
        remaining = max(1.0, RUN_TIMEOUT - (time.monotonic() - self.started))
        try:
            stdout, stderr = self.proc.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            pytest.fail(f"{self.example.file} did not finish in {RUN_TIMEOUT}s\n{stdout}\n{stderr}")
        where = f"examples/{self.example.file} {self.example.env}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        assert self.proc.returncode == 0, f"exit code {self.proc.returncode}: {where}"
        for text in self.example.stdout:
            assert text in stdout, f"{text!r} not printed: {where}"
        for text in self.example.stderr:
            assert text in stderr, f"{text!r} not on stderr: {where}"
        exchanges = read_wire_log(self.wire_log)
        assert len(exchanges) == self.example.answers, \
            f"{len(exchanges)} HTTP answers, expected {self.example.answers}: {where}"
        check_wire(exchanges)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- fixtures ----------------------------------------------------------------------------------

class NpmProjects:
    """Copies of examples/node and examples/react-streaming; `npm install` in both, started at once."""

    def __init__(self, root: Path):
        ignore = shutil.ignore_patterns(*IGNORED)
        self.node = root / "node"
        self.react = root / "react-streaming"
        shutil.copytree(EXAMPLES / "node", self.node, ignore=ignore)
        shutil.copytree(EXAMPLES / "react-streaming", self.react, ignore=ignore)
        (self.node / "recorder.mjs").write_text(NODE_FETCH_RECORDER)
        (self.react / "driver.mjs").write_text(DRIVER_JS)
        self.installs = {}
        if NODE and NPM:
            npm = [NPM, "install", "--no-audit", "--no-fund", "--loglevel=error"]
            self.installs = {
                self.node: self._start(npm, self.node),
                self.react: self._start(npm + ["--no-save", PLAYWRIGHT_CORE], self.react),
            }

    @staticmethod
    def _start(argv, cwd):
        return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def ready(self, project: Path) -> Path:
        proc = self.installs[project]
        try:
            output, _ = proc.communicate(timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"npm install in {project.name} took more than {NPM_TIMEOUT}s")
        assert proc.returncode == 0, f"npm install in {project.name} failed:\n{output}"
        return project

    def stop(self) -> None:
        for proc in self.installs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def npm_projects(tmp_path_factory):
    projects = NpmProjects(tmp_path_factory.mktemp("examples-npm"))
    yield projects
    projects.stop()


@pytest.fixture(scope="module")
def page_server(npm_projects):
    """Serves the React page's directory; started before the gateway, which allows its origin."""
    server = PageServer(npm_projects.react).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def examples_gateway(upstream, page_server, tmp_path_factory):
    entries = "".join(f"""
  - model_name: {name}
    litellm_params:
      model: openai/{target}
      api_base: {upstream.base_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
      timeout: 10""" for name, target in GATEWAY_MODELS.items())
    path = tmp_path_factory.mktemp("examples-gateway") / "config.yaml"
    path.write_text(f"""model_list:{entries}
router_settings:
  num_retries: 0
  cooldown_time: 0
general_settings:
  master_key: {MASTER_KEY}
  cors_allow_origins: ["{page_server.origin}"]
""")
    process = GatewayProcess(path, workers=2, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def python_runs(examples_gateway, npm_projects, tmp_path_factory):
    """All Python examples, started at once (npm_projects first, so npm installs meanwhile)."""
    recorder = tmp_path_factory.mktemp("examples-recorder")
    (recorder / "sitecustomize.py").write_text(PYTHON_HTTPX_RECORDER)
    runs = {}
    for example in PYTHON:
        workdir = tmp_path_factory.mktemp(f"example-{example.id}")
        env = example_env(examples_gateway.url, PYTHONPATH=str(recorder), PYTHONUNBUFFERED="1",
                          RECORDER_SCHEMAS=str(HERE / "openapi_schemas.py"),
                          WIRE_LOG=str(workdir / "wire.jsonl"), **example.env)
        runs[example.id] = Run(example, [sys.executable, str(EXAMPLES / example.file)], workdir, env,
                               workdir / "wire.jsonl")
    yield runs
    for run in runs.values():
        run.kill()


@pytest.fixture(scope="module")
def node_project(npm_projects):
    if not (NODE and NPM):
        pytest.skip("node and npm are needed to run examples/node")
    return npm_projects.ready(npm_projects.node)


@pytest.fixture(scope="module")
def node_runs(node_project, examples_gateway):
    runs = {}
    for example in NODE_RUNS:
        wire_log = node_project / f"{example.id}.wire.jsonl"
        env = example_env(examples_gateway.url, WIRE_LOG=str(wire_log), **example.env)
        script = Path(example.file).name
        runs[example.id] = Run(example, [NODE, "--import", "./recorder.mjs", script], node_project, env, wire_log)
    yield runs
    for run in runs.values():
        run.kill()


# --- Python ------------------------------------------------------------------------------------

@pytest.mark.parametrize("example", PYTHON, ids=[e.id for e in PYTHON])
def test_python_example(example, python_runs):
    python_runs[example.id].check()


# --- node --------------------------------------------------------------------------------------

@needs_node
@pytest.mark.parametrize("example", NODE_RUNS, ids=[e.id for e in NODE_RUNS])
def test_node_example(example, node_runs):
    node_runs[example.id].check()


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


@needs_node
def test_express_server(node_project, examples_gateway):
    """The Express app listens on PORT and answers POST /api/chat through the gateway."""
    port = free_port()
    wire_log = node_project / "express.wire.jsonl"
    wire_log.unlink(missing_ok=True)
    env = example_env(examples_gateway.url, PORT=str(port), WIRE_LOG=str(wire_log))
    proc = subprocess.Popen([NODE, "--import", "./recorder.mjs", Path(EXPRESS).name], cwd=node_project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _first_line(proc, RUN_TIMEOUT)
        assert line == f"Server running on http://127.0.0.1:{port}", \
            f"{line!r}; exit code {proc.poll()}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        url = f"http://127.0.0.1:{port}/api/chat"

        ok = requests.post(url, json={"message": "Hello Express"}, timeout=30)
        assert (ok.status_code, ok.json()) == (200, {"success": True, "response": "echo: Hello Express"})

        unknown = requests.post(url, json={"message": "Hello", "model": "no-such-model"}, timeout=30)
        assert unknown.status_code == 404, unknown.text
        assert unknown.json()["success"] is False
        assert "no-such-model" in unknown.json()["error"]

        deadline = time.monotonic() + 10   # the recorder writes once the body has been read
        while len(read_wire_log(wire_log)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    exchanges = read_wire_log(wire_log)
    assert [e["status"] for e in exchanges] == [200, 404]
    check_wire(exchanges)


# --- React, in headless Chromium ---------------------------------------------------------------

def _headers(entry: dict) -> dict:
    return {name.lower(): value for name, value in (entry.get("headers") or {}).items()}


@needs_browser
def test_react_page(npm_projects, page_server, examples_gateway, upstream):
    """The page, on its own origin, streams an answer from the gateway into the DOM.

    A second copy of the page on an origin the gateway does not allow gets no answer: the
    browser stops at the preflight, and the component shows the error.
    """
    project = npm_projects.ready(npm_projects.react)
    (project / "config.js").write_text(config_js(examples_gateway.url, MASTER_KEY, "slow-stream"))
    built = subprocess.run([NPM, "run", "build"], cwd=project, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert built.returncode == 0, f"npm run build failed:\n{built.stdout}\n{built.stderr}"
    assert (project / "dist" / "main.js").is_file()

    allowed_url = f"{page_server.origin}/index.html"
    refused_url = f"{page_server.other_origin}/index.html"
    done = subprocess.run([NODE, "driver.mjs", PAGE_MESSAGE, allowed_url, refused_url], cwd=project,
                          env={**os.environ, "CHROMIUM_PATH": CHROMIUM}, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, f"browser driver failed:\n{done.stdout}\n{done.stderr}"
    allowed, refused = json.loads(done.stdout)
    completions = f"{examples_gateway.url}/chat/completions"

    # The answer, streamed into the DOM piece by piece
    where = json.dumps(allowed, indent=1)
    assert allowed["error"] is None, where
    assert allowed["response"] == PAGE_STREAM, where
    assert all(PAGE_STREAM.startswith(text) for text in allowed["seen"]), where
    partial = {text for text in allowed["seen"] if text and text != PAGE_STREAM}
    assert len(partial) >= 2, f"the answer did not appear piece by piece: {where}"
    assert allowed["console"] == [], where
    sent = upstream.last_request("slow-8-100")["body"]["messages"]
    assert sent == [{"role": "user", "content": PAGE_MESSAGE}]

    # The CORS preflight, then the POST, both allowed for the page's origin
    preflights = [e for e in allowed["network"] if e["method"] == "OPTIONS" and e["url"] == completions]
    assert len(preflights) == 1 and preflights[0]["initiator"] == "preflight", where
    assert preflights[0]["status"] in (200, 204), where
    assert _headers(preflights[0])["access-control-allow-origin"] == page_server.origin, where
    assert "authorization" in _headers(preflights[0])["access-control-allow-headers"].lower(), where
    posts = [e for e in allowed["network"] if e["method"] == "POST" and e["url"] == completions]
    assert len(posts) == 1 and posts[0]["status"] == 200 and posts[0]["origin"] == page_server.origin, where
    assert _headers(posts[0])["content-type"].startswith("text/event-stream"), where
    assert _headers(posts[0])["access-control-allow-origin"] == page_server.origin, where

    # Another origin: refused at the preflight, the error shown, the button back
    where = json.dumps(refused, indent=1)
    assert refused["response"] == "" and "Connection error" in (refused["error"] or ""), where
    refused_posts = [e for e in refused["network"] if e["method"] == "POST" and e["url"] == completions]
    assert refused_posts and all(e.get("corsError") == "PreflightMissingAllowOriginHeader" and "status" not in e
                                 for e in refused_posts), where
