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
    azure_ad_token: str | None = field(default=None, repr=False)
    drop_params: bool = False     # leave out parameters this provider cannot take, instead of a 400
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
    # The client called /v1/completions and this is its prompt asked as a chat, of a
    # provider that only chats: the answer goes back as a legacy text completion.
    as_text: bool = False


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


CLIENT_GONE = 499      # the status of a request whose client hung up before its answer (spend rows, metrics)
# Kinds of route, for the metrics and the request log: model calls are counted, probes logged quietly.
MODEL_ROUTE, PROBE_ROUTE, OTHER_ROUTE = "model", "probe", "other"


@dataclass(slots=True)
class Trace:
    """One request as it goes: the `x-litellm-*` headers, the metrics and the request's log line read it."""
    started: float = 0.0            # time.monotonic() when the request arrived
    request_id: str = ""
    model_group: str = ""           # the group that served (a fallback's when one did), else the one asked for
    deployment_id: str = ""
    retries: int = 0                # attempts beyond the first, in each group tried
    fallbacks: int = 0              # fallback groups tried
    upstream_seconds: float = 0.0   # inside upstream attempts and backoff waits
    limit_headers: dict | None = None   # `x-ratelimit-*` of the caller's key
    cost: float | None = None           # of this answer, once known
    key_spend: float | None = None      # the key's spend in its budget period (after this answer, when known)
    key_label: str | None = None        # the virtual key's alias, else its hash's first 12 hex digits
    stream: bool = False
    first_byte: float = 0.0             # time.monotonic() when a stream had its first content (0: none)
    usage: Usage | None = None          # of the answer, once known
    failures: list | None = None        # (deployment id, error type) of each failed upstream attempt
    error_code: str | None = None       # the code of the error the client got (in-band for a stream)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the master key, a virtual key, or anyone when auth is off."""
    name: str
    is_master: bool = False
    models: frozenset[str] | None = None   # None = every model
    key: "KeyRecord | None" = None         # the virtual key's record, as last read from the database

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


# --- virtual keys and spend, as the database holds them -------------------------------------

@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A virtual key as stored: never its plaintext, only its SHA-256 (`token`)."""
    token: str
    key_name: str                         # "sk-...abcd": enough to recognise, not to use
    key_alias: str | None = None
    models: tuple[str, ...] = ()          # () = every model
    max_budget: float | None = None
    budget_duration: str | None = None    # as given, e.g. "30d"
    budget_anchor: float | None = None    # epoch s; budget periods start at anchor + k × duration
    spend: float = 0.0                    # as stored, for the period `spend_period`
    spend_period: float = 0.0             # start of the period the stored spend belongs to (0: no duration)
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    model_rpm_limit: Mapping[str, int] = field(default_factory=dict)
    model_tpm_limit: Mapping[str, int] = field(default_factory=dict)
    metadata: Mapping = field(default_factory=dict)
    user_id: str | None = None
    team_id: str | None = None
    expires: float | None = None          # epoch s
    blocked: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One model request's usage and cost; never a prompt or a completion."""
    id: str                       # made by the gateway (uuid4 hex): unique, so a retried batch adds nothing
    request_id: str               # the x-request-id the client saw
    key_token: str | None         # None for the master key or a gateway without auth
    key_alias: str | None
    user_id: str | None
    team_id: str | None
    model_group: str
    deployment_id: str            # "" when no deployment was called
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_ms: int
    status: int                   # the HTTP status the client got
    started_at: float             # epoch s
    spend_period: float = 0.0     # the key's budget period when it was spent


class Ask(NamedTuple):
    """One counter row a request reserves against; a request's asks are granted all or none."""
    name: str                     # key token, or token + "|" + model for per-model limits
    rpm: int | None
    tpm: int | None
    parallel: int | None
    budget: float | None
    period: float                 # budget period start (0 = no budget_duration)
    base_spend: float             # the database's spend for `period`: seeds the counter when it first meets it
    tokens: int                   # estimate held against tpm until settled
    cost: float                   # estimate held against the budget until settled


class Verdict(NamedTuple):
    ok: bool
    refused_by: str | None        # "rpm" | "tpm" | "parallel" | "budget"
    name: str | None              # the Ask.name that refused
    retry_after: float            # seconds until the refusing limit frees up (0: not by waiting)
    remaining_requests: int | None   # of the first ask, counting this request (None: no rpm limit)
    remaining_tokens: int | None     # of the first ask (None: no tpm limit)
    spend: float                  # the first ask's live spend in its period, before this request


class LimitState(Protocol):
    """Per-key counters, exact across workers (and instances with Redis): reserve, then settle.

    A reservation is held under `lease` (the request's own id) until settled; one
    whose worker or instance died is released by `lease_until` at the latest.
    `settle` returns the first ask's spend after adding `cost` (None when it
    settles later, off the request path).
    """

    def reserve(self, asks: Sequence[Ask], now: float, lease: str, lease_until: float) -> Verdict: ...
    def settle(self, asks: Sequence[Ask], lease: str, tokens: int, cost: float, now: float) -> float | None: ...


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
