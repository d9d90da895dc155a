"""Small frozen dataclasses and Protocols shared by every layer (stdlib only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, NamedTuple, Protocol, Sequence


@dataclass(frozen=True, slots=True)
class Deployment:
    """One `model_list` entry: a model group name wired to one upstream model."""
    id: str
    model_name: str             # the group name clients send as "model"
    provider: str               # prefix of litellm_params.model
    upstream_model: str         # litellm_params.model after the provider prefix
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 600.0
    stream_timeout: float | None = None
    max_retries: int | None = None
    weight: float | None = None   # None: not set in the config (simple-shuffle then uses rpm/tpm)
    rpm: int | None = None
    tpm: int | None = None
    organization: str | None = None
    api_version: str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    aws: Mapping[str, str] = field(default_factory=dict, repr=False)
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    mode: str = "chat"
    max_tokens: int | None = None
    health_check_timeout: float | None = None
    line: int | None = None     # where it stands in the config file, for messages
    # `os.environ/NAME` credentials whose variable is unset or empty: the
    # deployment answers a clear error naming them instead of calling out keyless.
    unset_env: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """`router_settings`, as the router needs them (here so routing/ need not import settings)."""
    routing_strategy: str = "simple-shuffle"
    num_retries: int = 2
    timeout: float | None = None
    allowed_fails: int = 3
    cooldown_time: float = 5.0
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()
    context_window_fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()
    content_policy_fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()
    default_fallbacks: tuple[str, ...] = ()
    max_fallbacks: int = 5


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """A validated client call, in the OpenAI shape it arrived in.

    `params` holds the OpenAI fields exactly as the client sent them (so they
    reach an OpenAI-compatible upstream unchanged); `extra` holds vendor extras
    that only OpenAI-compatible adapters forward.
    """
    endpoint: str               # "chat/completions" | "completions" | "embeddings"
    model: str
    params: Mapping
    extra: Mapping
    stream: bool = False
    include_usage: bool = False
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Mapping | None) -> "Usage | None":
        """Token counts from an upstream's `usage`; a field of the wrong type counts as absent.

        Upstreams are not always careful (strings, floats, nulls, nested
        objects): a bad count must never turn a good answer into an error.
        """
        if not isinstance(usage, Mapping):
            return None
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        total = _count(usage.get("total_tokens")) or prompt + completion
        return cls(prompt, completion, total)


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 2 ** 53:
        return 0
    return int(value)


@dataclass(slots=True)
class Completion:
    """A whole (non-streamed) answer: the OpenAI-shaped body and its usage."""
    body: dict
    usage: Usage | None = None


class ChunkStream(Protocol):
    """A started upstream stream, already checked up to its first content-bearing chunk.

    Iterating yields SSE bytes for the client: whole `data: {chunk}\n\n` events.
    Errors after the first byte are raised as GatewayError from `__next__`.
    """
    usage: Usage | None

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Trace:
    """What the router did for one call, filled in as it goes: the `x-litellm-*` headers read it."""
    started: float = 0.0            # time.monotonic() when the request arrived
    model_group: str = ""           # the group that served (a fallback's when one did), else the one asked for
    deployment_id: str = ""
    retries: int = 0                # attempts beyond the first, in each group tried
    fallbacks: int = 0              # fallback groups tried
    upstream_seconds: float = 0.0   # inside upstream attempts and backoff waits


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the master key, a virtual key, or anyone when auth is off."""
    name: str
    is_master: bool = False
    models: frozenset[str] | None = None   # None = every model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


# --- what every worker (and, with Redis, every instance) must agree on ----------------------

@dataclass(frozen=True, slots=True)
class Cooldown:
    """A deployment (or any named entity) taken out of rotation until `until` (time.time())."""
    until: float
    kind: str                   # "rate_limit" | "auth" | "failure": what the client is told when all cool
    retry_after: float | None = None   # the upstream's own value, when it gave one


class EntityStats(NamedTuple):
    """One name's counters, added up over workers (a tuple: built on every routed call)."""
    in_flight: int = 0
    requests: int = 0           # started this calendar minute
    tokens: int = 0             # recorded this calendar minute
    latency: float | None = None   # moving average, seconds, whole answers
    ttft: float | None = None      # moving average, seconds to the first token of streams
    cooldown: Cooldown | None = None


class RouterState(Protocol):
    """Counters and cooldowns by name (deployment ids for the router; later key hashes too).

    The hot-path methods (begin, end, add_tokens, observe_latency, stats) never wait on
    another process or server; failures and cooldowns may take a lock.
    """
    backend: str

    def begin(self, name: str) -> None: ...
    def end(self, name: str) -> None: ...
    def add_tokens(self, name: str, tokens: int) -> None: ...
    def observe_latency(self, name: str, seconds: float, first_token: bool) -> None: ...
    def stats(self, names: Sequence[str]) -> list[EntityStats]: ...
    def record_failure(self, name: str, threshold: int, cooldown: Cooldown) -> Cooldown | None: ...
    def cool(self, name: str, cooldown: Cooldown) -> None: ...
    def claim_probe(self, interval: float) -> bool: ...
    def publish_health(self, report: bytes) -> None: ...
    def health_report(self) -> bytes | None: ...
    def status(self) -> dict[str, str]: ...
    def close(self) -> None: ...
