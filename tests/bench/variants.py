"""``--variants``: the work tree's gateway once per router or key configuration, side by side.

Why configurations and not revisions: the router's cost (several deployments,
a strategy that reads shared state, Redis) and the cost of a virtual key (its
lookup, its limit reserved before the call and settled after, its spend row)
are paid by the same code under a different config or caller. Each variant is
one gateway started from the work tree with its own generated config; every
deployment of every variant points at the same fake upstream, so the upstream
side has the same capacity whatever the variant, and only the gateway differs.

Names: ``single`` is one deployment with ``simple-shuffle`` (today's config,
called with the master key); ``<strategy>-<N>[-redis]``, e.g.
``least-busy-3`` (three deployments of ``bench-model``, ``routing_strategy:
least-busy``) or ``least-busy-3-redis`` (the same with
``general_settings.redis_url``); ``vkey[-pg][-redis]``: ``single``'s
deployment, called with a virtual key that has an rpm limit (generated through
``POST /key/generate`` once the gateway is up), on the embedded default
(SQLite next to the config, counters in shared memory), with ``-pg`` on a
PostgreSQL database made for the run, with ``-redis`` with its counters in
Redis. ``quiet`` is ``single`` with the metrics and the request log off
(``disable_metrics: true``, ``log_level: warning``): against ``single`` it
shows what counting and logging every request costs; ``no-metrics`` and
``no-logs`` turn off one of the two.
"""
from __future__ import annotations

import http.client
import json
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql://root@127.0.0.1:5432/test"
KEY_RPM_LIMIT = 100_000_000  # far above what a run sends: the limit is checked and counted, never reached
MAX_DEPLOYMENTS = 16
DEPLOYMENT = """\
  - model_name: bench-model
    litellm_params:
      model: openai/bench-upstream-model
      api_base: http://{host}:{upstream_port}/v1
      api_key: bench-upstream-key
"""


class VariantError(ValueError):
    """A variant name that means nothing, or a variant that cannot run here."""


@dataclass(frozen=True)
class Variant:
    name: str
    strategy: str
    deployments: int
    redis: bool
    key: bool = False  # the load is sent with a virtual key (rpm_limit KEY_RPM_LIMIT), not the master key
    postgres: bool = False  # general_settings.database_url: the run's PostgreSQL database
    metrics: bool = True  # general_settings.disable_metrics is not set
    request_log: bool = True  # log_level info: one line per request

    def config(self, host: str, upstream_port: int, redis_url: str, database_url: str | None = None) -> str:
        """The gateway config of this variant (keys every revision since the router accepts)."""
        models = DEPLOYMENT.format(host=host, upstream_port=upstream_port) * self.deployments
        text = f"model_list:\n{models}"
        if self.strategy != "simple-shuffle":
            text += f"router_settings:\n  routing_strategy: {self.strategy}\n"
        text += "general_settings:\n  master_key: bench-master-key\n"
        if self.redis:
            text += f"  redis_url: {redis_url}\n"
        if not self.metrics:
            text += "  disable_metrics: true\n"
        if not self.request_log:
            text += "  log_level: warning\n"
        if self.postgres:
            if not database_url:
                raise VariantError(f"variant {self.name} needs a PostgreSQL database_url")
            text += f"  database_url: {json.dumps(database_url)}\n"
        return text


def parse_variant(name: str) -> Variant:
    """``single``, ``<strategy>-<N>[-redis]`` or ``vkey[-pg][-redis]``."""
    if name == "single":
        return Variant(name, "simple-shuffle", 1, False)
    if name in ("quiet", "no-metrics", "no-logs"):
        return Variant(name, "simple-shuffle", 1, False, metrics=name == "no-logs", request_log=name == "no-metrics")
    if name.split("-")[0] == "vkey":
        flags = name.split("-")[1:]
        if flags not in ([], ["pg"], ["redis"], ["pg", "redis"]):
            raise VariantError(f"unknown variant {name!r}: a key variant is vkey, vkey-pg, vkey-redis or"
                               " vkey-pg-redis")
        return Variant(name, "simple-shuffle", 1, "redis" in flags, key=True, postgres="pg" in flags)
    rest, redis = (name[:-len("-redis")], True) if name.endswith("-redis") else (name, False)
    strategy, _, count = rest.rpartition("-")
    if strategy not in STRATEGIES or not count.isdigit() or not 1 <= int(count) <= MAX_DEPLOYMENTS:
        raise VariantError(f"unknown variant {name!r}: use 'single', 'quiet', 'no-metrics', 'no-logs', 'vkey[-pg][-redis]' or"
                           f" '<strategy>-<N>[-redis]' with a strategy of {', '.join(STRATEGIES)} and"
                           f" 1 <= N <= {MAX_DEPLOYMENTS}, e.g. least-busy-3-redis")
    return Variant(name, strategy, int(count), redis)


def parse_variants(text: str) -> list[Variant]:
    variants = [parse_variant(name.strip()) for name in text.split(",") if name.strip()]
    names = [v.name for v in variants]
    if len(variants) < 2:
        raise VariantError("--variants needs at least two variants to compare, e.g. single,least-busy-3")
    if len(set(names)) != len(names):
        raise VariantError(f"--variants names a variant twice: {text}")
    return variants


def check_redis(url: str, timeout: float = 2.0) -> None:
    """A Redis answers PING at ``url``: otherwise a Redis variant would quietly
    measure the gateway's local fallback instead of Redis."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise VariantError(f"--redis-url must be redis://host:port/db, not {url!r}")
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        raise VariantError(f"no Redis at {url} ({exc}); start one or drop the -redis variants") from exc
    if not answer.startswith((b"+PONG", b"-NOAUTH")):
        raise VariantError(f"{url} did not answer PING like a Redis: {answer!r}")


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``server_url`` for this run; its URL. Dropped afterwards
    (``WITH (FORCE)``: even if a gateway was killed with connections open)."""
    import psycopg  # only runs with a -pg variant need it (it is the gateway's own driver)

    parts = urlsplit(server_url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise VariantError(f"--postgres-url must be postgresql://user@host:port/database, not {server_url!r}")
    name = f"shin_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"CREATE DATABASE {name}")
    except psycopg.Error as exc:
        raise VariantError(f"cannot create a database through {parts.hostname}:{parts.port or 5432}"
                           f" ({type(exc).__name__}: {str(exc).strip().splitlines()[0]}); start a PostgreSQL"
                           " or pass --postgres-url") from exc
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def generate_key(host: str, port: int, master_key: str, alias: str) -> str:
    """A virtual key with rpm_limit KEY_RPM_LIMIT, through the gateway's own ``POST /key/generate``."""
    body = json.dumps({"key_alias": alias, "rpm_limit": KEY_RPM_LIMIT})
    conn = http.client.HTTPConnection(host, port, timeout=10.0)
    try:
        conn.request("POST", "/key/generate", body=body,
                     headers={"Authorization": f"Bearer {master_key}", "Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise VariantError(f"POST /key/generate answered {response.status}: {data[:300]!r}")
    return json.loads(data)["key"]


def key_requests(host: str, port: int, master_key: str, key: str) -> int | str:
    """How many requests the gateway's spend records hold for ``key`` (``GET /global/spend``), or why not."""
    conn = http.client.HTTPConnection(host, port, timeout=10.0)
    try:
        conn.request("GET", f"/global/spend?api_key={quote(key)}", headers={"Authorization": f"Bearer {master_key}"})
        response = conn.getresponse()
        data = response.read()
    except OSError as exc:
        return f"unknown ({exc})"
    finally:
        conn.close()
    if response.status != 200:
        return f"unknown (HTTP {response.status})"
    return json.loads(data).get("requests", "unknown")
