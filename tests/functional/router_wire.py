"""Helpers for the router's functional tests: several fake upstreams, their config, known workers.

Cross-worker claims ("no worker sends to a cooling deployment") need requests
that are known to be served by one worker or the other. `pin_workers` opens
kept-alive connections to the gateway and asks the kernel (/proc) which worker
process accepted each one, so a test can send on worker 1, then on worker 2.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection, HTTPResponse

import openai
import requests
import yaml

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .fake_upstream import FakeUpstream
from .gateway_process import GatewayProcess

CHAT = "/v1/chat/completions"
ENV = {"TEST_UPSTREAM_KEY": UPSTREAM_KEY}
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
ROUTING_HEADERS = ("x-litellm-model-group", "x-litellm-model-id", "x-litellm-attempted-retries",
                   "x-litellm-attempted-fallbacks", "x-litellm-response-duration-ms",
                   "x-litellm-overhead-duration-ms")


class Fakes:
    """Fake upstreams made on demand, each its own server on 127.0.0.1, stopped together."""

    def __init__(self):
        self.started: list[FakeUpstream] = []

    def __call__(self, count: int = 1) -> list[FakeUpstream]:
        made = [FakeUpstream(api_key=UPSTREAM_KEY).start() for _ in range(count)]
        self.started.extend(made)
        return made

    def named(self, *names: str) -> dict[str, FakeUpstream]:
        """One fake upstream per name (the deployment id it will serve, for readable tests)."""
        return {name: self(1)[0] for name in names}

    def stop(self) -> None:
        """All at once: each server takes up to its 0.5 s poll interval to notice."""
        with ThreadPoolExecutor(max(1, len(self.started))) as pool:
            list(pool.map(FakeUpstream.stop, self.started))


def deployment(group: str, id_: str | None, fake: FakeUpstream, upstream_model: str = "echo", **params) -> dict:
    """One model_list entry at `fake`, with a readable deployment id (model_info.id; None: none set)."""
    entry = {"model_name": group,
             "litellm_params": {"model": f"openai/{upstream_model}", "api_base": fake.base_url,
                                "api_key": "os.environ/TEST_UPSTREAM_KEY", **params}}
    if id_ is not None:
        entry["model_info"] = {"id": id_}
    return entry


def router_config(*deployments: dict, **router_settings) -> str:
    """A config of these deployments; router_settings default to no retries and no cooldowns."""
    settings = {"num_retries": 0, "cooldown_time": 0, **router_settings}
    return yaml.safe_dump({"model_list": list(deployments), "router_settings": settings,
                           "general_settings": {"master_key": MASTER_KEY}}, sort_keys=False)


def module_gateway(tmp_path_factory, name: str, config_text: str) -> GatewayProcess:
    """A gateway shared by one test module (2 gevent workers); the caller stops it."""
    path = tmp_path_factory.mktemp(name) / "config.yaml"
    path.write_text(config_text)
    return GatewayProcess(path, workers=2, env=ENV).start()


def sdk(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=20)


def chat(model: str, content: str = "hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def retry_after(headers) -> int:
    """The Retry-After header as whole seconds; fails if it is missing or not an integer ≥ 1."""
    value = headers.get("Retry-After")
    assert value is not None and value.isdigit() and int(value) >= 1, dict(headers)
    return int(value)


def routing(headers) -> dict[str, str]:
    """The six x-litellm-* headers, checked: present, counts and durations non-negative integers."""
    found = {name: headers.get(name) for name in ROUTING_HEADERS}
    assert None not in found.values(), f"missing routing headers: {found}"
    for name in ("x-litellm-attempted-retries", "x-litellm-attempted-fallbacks", "x-litellm-response-duration-ms",
                 "x-litellm-overhead-duration-ms"):
        assert re.fullmatch(r"\d+", found[name]), f"{name}: {found[name]!r} is not a non-negative integer"
    assert int(found["x-litellm-overhead-duration-ms"]) <= int(found["x-litellm-response-duration-ms"]), found
    return found


def send_many(gateway: GatewayProcess, bodies: list[dict], threads: int = 8,
              fresh: bool = False) -> list[requests.Response]:
    """POST every body from `threads` threads: on one kept-alive connection per thread, or on a fresh
    connection each (`fresh`, so that both workers serve)."""
    local = threading.local()
    sessions: list[requests.Session] = []

    def one(body: dict) -> requests.Response:
        if fresh:
            return requests.post(f"{gateway.url}{CHAT}", json=body, timeout=30,
                                 headers={**AUTH, "Connection": "close"})
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            sessions.append(session)
        return session.post(f"{gateway.url}{CHAT}", json=body, headers=AUTH, timeout=30)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, bodies))
    finally:
        for session in sessions:
            session.close()


def wait_for(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.02)


def minute_left(seconds: float) -> None:
    """Sleep into the next calendar minute unless this one has `seconds` left (per-minute counters)."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


# --- connections known to be served by one worker ----------------------------------------

class WorkerConnection:
    """A kept-alive HTTP/1.1 connection to the gateway, accepted by worker process `pid`."""

    def __init__(self, connection: HTTPConnection, pid: int):
        self.connection = connection
        self.pid = pid
        self.served: str | None = None    # a test's note: the deployment its last call went to

    def send(self, body: dict, path: str = CHAT, key: str | None = None) -> HTTPResponse:
        """POST (with the master key unless `key`) and read the response head; the caller reads the body."""
        auth = {"Authorization": f"Bearer {key}"} if key else AUTH
        self.connection.request("POST", path, body=json.dumps(body),
                                headers={**auth, "Content-Type": "application/json"})
        return self.connection.getresponse()

    def post(self, body: dict, path: str = CHAT, key: str | None = None) -> tuple[HTTPResponse, dict]:
        response = self.send(body, path, key)
        return response, json.loads(response.read())

    def close(self) -> None:
        self.connection.close()


def pin_workers(gateway: GatewayProcess, per_worker: int = 1, tries: int = 300) -> list[list[WorkerConnection]]:
    """`per_worker` kept-alive connections to each of the gateway's workers, one list per worker."""
    pids = gateway.worker_pids()
    assert len(pids) == 2, f"want 2 gateway workers, found {pids}"
    pinned: dict[int, list[WorkerConnection]] = {pid: [] for pid in pids}
    for _ in range(tries):
        if min(len(conns) for conns in pinned.values()) >= per_worker:
            break
        connection = HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        connection.request("GET", "/health/liveliness")
        connection.getresponse().read()
        pid = _accepting_pid(gateway.port, connection.sock.getsockname()[1], pids)
        if pid in pinned and len(pinned[pid]) < per_worker:
            pinned[pid].append(WorkerConnection(connection, pid))
        else:
            connection.close()
    else:
        raise AssertionError(f"could not reach both workers in {tries} connections: "
                             f"{ {pid: len(c) for pid, c in pinned.items()} }")
    return list(pinned.values())


def _accepting_pid(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the server side of the loopback connection from `client_port`."""
    inode = None
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if local == server_port and remote == client_port:
                inode = fields[9]
                break
    assert inode is not None, f"no server-side socket for client port {client_port}"
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None
