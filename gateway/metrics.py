"""Prometheus metrics, exact across workers: prometheus-client's multiprocess mode.

Every worker writes its counts to its own memory-mapped files in the
directory the gunicorn master prepared (server.py); a scrape, whichever worker
answers it, sums the files of all workers, the dead ones' included, so a
restarted worker loses no counted request. Outside gunicorn (tests,
check-config) the values live in this process.

Nothing is built at import: create_app builds a Metrics, and with it the
metric objects, after gunicorn has forked and set the directory.
"""
from __future__ import annotations

from .types import Deployment, RouterState, Trace

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# (name, kind, labels, help): the series a scrape shows, and what docs/monitoring-guide.md lists.
DEFINITIONS = (
    ("shin_gateway_requests_total", "counter", ("model_group", "status_code"),
     "Requests to the model routes, failed ones included (499: the client went away first)."),
    ("shin_gateway_request_duration_seconds", "histogram", ("model_group",),
     "Seconds from a model request's arrival to the end of its answer or stream."),
    ("shin_gateway_time_to_first_token_seconds", "histogram", ("model_group",),
     "Seconds from a streamed request's arrival to its first content, retries included."),
    ("shin_gateway_overhead_seconds", "histogram", (),
     "Seconds of a model request spent in the gateway itself: its duration less upstream time."),
    ("shin_gateway_tokens_total", "counter", ("model_group", "direction"),
     "Tokens of answered requests; direction is input (prompt) or output (completion)."),
    ("shin_gateway_spend_total", "counter", ("model_group",),
     "Cost in USD of answered requests, at the deployments' configured prices."),
    ("shin_gateway_upstream_errors_total", "counter", ("deployment", "error_type"),
     "Failed upstream attempts, mid-stream failures included."),
    ("shin_gateway_retries_total", "counter", (), "Upstream attempts beyond the first of a model group."),
    ("shin_gateway_fallbacks_total", "counter", (), "Fallback model groups tried."),
    ("shin_gateway_deployment_cooldowns_total", "counter", ("deployment",),
     "Times a deployment was taken out of rotation."),
    ("shin_gateway_in_flight_requests", "gauge", (), "Model requests being served now."),
    ("shin_gateway_in_flight_streams", "gauge", (), "Streams being relayed now."),
    ("shin_gateway_key_requests_total", "counter", ("key_alias", "status_code"),
     "Model requests per virtual key (its alias, else the first 12 hex digits of its hash)."),
    ("shin_gateway_key_tokens_total", "counter", ("key_alias", "direction"), "Tokens per virtual key."),
    ("shin_gateway_key_spend_total", "counter", ("key_alias",), "Cost in USD per virtual key."),
    ("shin_gateway_deployment_cooling", "gauge", ("model_group", "deployment"),
     "1 while a deployment is cooling down (out of rotation), else 0."),
    ("shin_gateway_deployment_in_flight", "gauge", ("model_group", "deployment"),
     "Requests in flight on each deployment, all workers (and, with Redis, all instances)."),
    ("shin_gateway_build_info", "gauge", ("version",), "Always 1; the gateway's version as a label."),
)
# Read from the router state at scrape time, not counted per request.
_AT_SCRAPE = ("shin_gateway_deployment_cooling", "shin_gateway_deployment_in_flight", "shin_gateway_build_info")
# The error types upstream_errors_total may carry; any other code is a client error's.
ERROR_TYPES = frozenset({"upstream_error", "upstream_timeout", "rate_limit_exceeded", "upstream_auth_error",
                         "context_length_exceeded", "content_policy_violation"})


class Metrics:
    """Counts requests as they end; renders the Prometheus text for `GET /metrics`."""

    def __init__(self, deployments: tuple[Deployment, ...], state: RouterState, version: str,
                 directory: str | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._directory = directory   # None: this process's values only (no gunicorn master)
        self._registry = CollectorRegistry(auto_describe=False)
        self._deployments = deployments
        self._state = state
        self._version = version
        built = {}
        for name, kind, labels, text in DEFINITIONS:
            if name in _AT_SCRAPE:
                continue
            if kind == "counter":
                built[name] = Counter(name, text, labels, registry=self._registry)
            elif kind == "histogram":
                buckets = OVERHEAD_BUCKETS if name == "shin_gateway_overhead_seconds" else LATENCY_BUCKETS
                built[name] = Histogram(name, text, labels, registry=self._registry, buckets=buckets)
            else:
                built[name] = Gauge(name, text, labels, registry=self._registry, multiprocess_mode="livesum")
        self._requests = built["shin_gateway_requests_total"]
        self._duration = built["shin_gateway_request_duration_seconds"]
        self._ttft = built["shin_gateway_time_to_first_token_seconds"]
        self._overhead = built["shin_gateway_overhead_seconds"]
        self._tokens = built["shin_gateway_tokens_total"]
        self._spend = built["shin_gateway_spend_total"]
        self._upstream_errors = built["shin_gateway_upstream_errors_total"]
        self._retries = built["shin_gateway_retries_total"]
        self._fallbacks = built["shin_gateway_fallbacks_total"]
        self._cooldowns = built["shin_gateway_deployment_cooldowns_total"]
        self._in_flight = built["shin_gateway_in_flight_requests"]
        self._streams = built["shin_gateway_in_flight_streams"]
        self._key_requests = built["shin_gateway_key_requests_total"]
        self._key_tokens = built["shin_gateway_key_tokens_total"]
        self._key_spend = built["shin_gateway_key_spend_total"]
        # `.labels()` costs a lock and a dict lookup per call: children are kept here by label values.
        self._children: dict[tuple, object] = {}

    def request_started(self) -> None:
        self._in_flight.inc()

    def stream_started(self) -> None:
        self._streams.inc()

    def stream_ended(self) -> None:
        self._streams.dec()

    def cooldown_started(self, deployment_id: str) -> None:
        self._child(self._cooldowns, deployment_id).inc()

    def request_finished(self, trace: Trace, status: int, ended: float) -> None:
        """A model request is over, whichever way it ended: count it, time it, add up its tokens and cost."""
        group = trace.model_group
        child = self._child
        elapsed = ended - trace.started
        self._in_flight.dec()
        child(self._requests, group, status).inc()
        child(self._duration, group).observe(elapsed)
        self._overhead.observe(max(0.0, elapsed - trace.upstream_seconds))
        if trace.first_byte:
            child(self._ttft, group).observe(trace.first_byte - trace.started)
        if trace.retries:
            self._retries.inc(trace.retries)
        if trace.fallbacks:
            self._fallbacks.inc(trace.fallbacks)
        for deployment_id, error in trace.failures or ():
            child(self._upstream_errors, deployment_id, error_type(error.code, error.status)).inc()
        usage = trace.usage
        if usage is not None:
            child(self._tokens, group, "input").inc(usage.prompt_tokens)
            child(self._tokens, group, "output").inc(usage.completion_tokens)
        if trace.cost:
            child(self._spend, group).inc(trace.cost)
        key = trace.key_label
        if key is not None:
            child(self._key_requests, key, status).inc()
            if usage is not None:
                child(self._key_tokens, key, "input").inc(usage.prompt_tokens)
                child(self._key_tokens, key, "output").inc(usage.completion_tokens)
            if trace.cost:
                child(self._key_spend, key).inc(trace.cost)

    def render(self) -> bytes:
        """The text a scrape gets: every worker's files summed, then the router state as it is now."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self._directory is None:
            return generate_latest(self._registry) + self._scrape_time()
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=self._directory)
        return generate_latest(registry) + self._scrape_time()

    def _scrape_time(self) -> bytes:
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.exposition import generate_latest

        deployments = self._deployments
        stats = self._state.stats([d.id for d in deployments]) if deployments else []
        cooling = GaugeMetricFamily("shin_gateway_deployment_cooling", _help("shin_gateway_deployment_cooling"),
                                    labels=("model_group", "deployment"))
        in_flight = GaugeMetricFamily("shin_gateway_deployment_in_flight",
                                      _help("shin_gateway_deployment_in_flight"), labels=("model_group", "deployment"))
        for deployment, stat in zip(deployments, stats, strict=True):
            labels = (deployment.model_name, deployment.id)
            cooling.add_metric(labels, 1.0 if stat.cooldown is not None else 0.0)
            in_flight.add_metric(labels, float(stat.in_flight))
        info = GaugeMetricFamily("shin_gateway_build_info", _help("shin_gateway_build_info"), labels=("version",))
        info.add_metric((self._version,), 1.0)
        return generate_latest(_Families((cooling, in_flight, info)))

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class _Families:
    """A collector over metric families already built (what generate_latest takes)."""

    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def _help(name: str) -> str:
    return next(text for n, _, _, text in DEFINITIONS if n == name)


def error_type(code: str | None, status: int) -> str:
    """A bounded label for an upstream failure: our codes as they are, any other client error as one."""
    if code in ERROR_TYPES:
        return code
    return "client_error" if status < 500 else "upstream_error"
