"""``--variants``: the work tree's gateway once per router configuration, side by side.

Why configurations and not revisions: the router's cost (several deployments,
a strategy that reads shared state, Redis) is paid by the same code under a
different config. Each variant is one gateway started from the work tree with
its own generated config; every deployment of every variant points at the
same fake upstream, so the upstream side has the same capacity whatever the
variant, and only the gateway's routing differs.

Names: ``single`` is one deployment with ``simple-shuffle`` (today's config);
otherwise ``<strategy>-<N>[-redis]``, e.g. ``least-busy-3`` (three deployments
of ``bench-model``, ``routing_strategy: least-busy``) or ``least-busy-3-redis``
(the same with ``general_settings.redis_url``).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
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

    def config(self, host: str, upstream_port: int, redis_url: str) -> str:
        """The gateway config of this variant (keys every revision since the router accepts)."""
        models = DEPLOYMENT.format(host=host, upstream_port=upstream_port) * self.deployments
        text = f"model_list:\n{models}"
        if self.strategy != "simple-shuffle":
            text += f"router_settings:\n  routing_strategy: {self.strategy}\n"
        text += "general_settings:\n  master_key: bench-master-key\n"
        if self.redis:
            text += f"  redis_url: {redis_url}\n"
        return text


def parse_variant(name: str) -> Variant:
    """``single`` or ``<strategy>-<N>[-redis]``."""
    if name == "single":
        return Variant(name, "simple-shuffle", 1, False)
    rest, redis = (name[:-len("-redis")], True) if name.endswith("-redis") else (name, False)
    strategy, _, count = rest.rpartition("-")
    if strategy not in STRATEGIES or not count.isdigit() or not 1 <= int(count) <= MAX_DEPLOYMENTS:
        raise VariantError(f"unknown variant {name!r}: use 'single' or '<strategy>-<N>[-redis]' with a strategy"
                           f" of {', '.join(STRATEGIES)} and 1 <= N <= {MAX_DEPLOYMENTS}, e.g. least-busy-3-redis")
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
