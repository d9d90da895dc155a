"""The only reader of os.environ and the config file; validates at boot, fails fast.

The config is the LiteLLM proxy `config.yaml` subset of CONTRACT §2. Unknown
keys and wrong types stop start-up with the key's dotted path and its line in
the file, so an operator fixes the right line the first time.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection
from urllib.parse import urlsplit

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from .types import Deployment, RouterSettings

ENV_PREFIX = "os.environ/"
DEFAULT_CONFIG = "config/config.yaml"
VALIDATED_TEXT_ENV = "SHIN_GATEWAY_CONFIG_TEXT"
ROUTING_STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing")
# The peer's other name for the same strategy: its configs carry it, so it is read as ours.
STRATEGY_ALIASES = {"usage-based-routing-v2": "usage-based-routing"}
MODES = ("chat", "embedding", "completion")
FALLBACK_KEYS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")
# Keys whose `os.environ/NAME` must resolve, or the gateway would serve open (the keys), or split
# keys, spend and limits per VM on a database and counters of its own (the URLs).
FAIL_CLOSED_KEYS = (("general_settings", "master_key"), ("general_settings", "metrics_token"),
                    ("general_settings", "database_url"), ("general_settings", "redis_url"))
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DRAIN_MARGIN = 15.0   # seconds of graceful time past the longest a stream may run
AWS_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_region_name")
# Where AWS's own tools look for each, when a bedrock deployment does not name it.
AWS_ENV = {"aws_access_key_id": ("AWS_ACCESS_KEY_ID",), "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
           "aws_session_token": ("AWS_SESSION_TOKEN",),
           "aws_region_name": ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION")}
STATE_FD_ENV = "SHIN_GATEWAY_STATE_FD"   # the shared router state the gunicorn master made (server.py)
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"   # prometheus-client's own name: every worker's metric files
_METRICS_OWN_ENV = "SHIN_GATEWAY_METRICS_OWN_DIR"       # set when the master made that directory itself
_METRICS_PREPARED_ENV = "SHIN_GATEWAY_METRICS_PREPARED"  # set once the master emptied an operator's one
HEAD_TIMEOUT = 10.0   # seconds for a request line and headers to arrive
BODY_TIMEOUT = 30.0   # seconds for the body to arrive once the head has


class ConfigError(Exception):
    """A config that must not be served; the message is meant for a human."""


# --- schemas: the shape of the file -------------------------------------------------------

class _Strict(Schema):
    class Meta:
        unknown = RAISE


_positive = validate.Range(min=0, min_inclusive=False)


def _one_of_any_case(choices: tuple[str, ...]):
    def check(value: str) -> None:
        if value.lower() not in choices:
            raise ValidationError(f"must be one of {', '.join(choices)} (any case)")
    return check

_non_negative = validate.Range(min=0)


class _DateOrString(fields.String):
    """A string; an unquoted `2024-10-21` (which YAML reads as a date) counts as the string it looks like."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, datetime.date):
            return value.isoformat()
        return super()._deserialize(value, attr, data, **kwargs)


class LitellmParamsSchema(_Strict):
    model = fields.String(required=True, validate=validate.Regexp(
        r"^[A-Za-z0-9_.-]+/.+", error="must be '<provider>/<upstream model>', e.g. 'openai/gpt-4o-mini'"))
    api_base = fields.String(allow_none=True, validate=validate.URL(require_tld=False, schemes={"http", "https"}))
    api_key = fields.String(allow_none=True)
    api_version = _DateOrString(allow_none=True)
    azure_ad_token = fields.String(allow_none=True)
    drop_params = fields.Boolean(allow_none=True)
    organization = fields.String(allow_none=True)
    extra_headers = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True)
    aws_access_key_id = fields.String(allow_none=True)
    aws_secret_access_key = fields.String(allow_none=True)
    aws_session_token = fields.String(allow_none=True)
    aws_region_name = fields.String(allow_none=True)
    rpm = fields.Integer(strict=True, validate=_non_negative, allow_none=True)
    tpm = fields.Integer(strict=True, validate=_non_negative, allow_none=True)
    timeout = fields.Float(validate=_positive, allow_none=True)
    stream_timeout = fields.Float(validate=_positive, allow_none=True)
    max_retries = fields.Integer(strict=True, validate=_non_negative, allow_none=True)
    weight = fields.Float(validate=_positive, allow_none=True)
    input_cost_per_token = fields.Float(validate=_non_negative, allow_none=True)
    output_cost_per_token = fields.Float(validate=_non_negative, allow_none=True)


class ModelInfoSchema(_Strict):
    id = fields.String(allow_none=True)
    mode = fields.String(validate=validate.OneOf(MODES), allow_none=True)
    max_tokens = fields.Integer(strict=True, validate=_positive, allow_none=True)
    health_check_timeout = fields.Float(validate=_positive, allow_none=True)
    input_cost_per_token = fields.Float(validate=_non_negative, allow_none=True)
    output_cost_per_token = fields.Float(validate=_non_negative, allow_none=True)


class ModelEntrySchema(_Strict):
    model_name = fields.String(required=True, validate=validate.Length(min=1))
    litellm_params = fields.Nested(LitellmParamsSchema, required=True)
    model_info = fields.Nested(ModelInfoSchema, allow_none=True)


class RouterSettingsSchema(_Strict):
    routing_strategy = fields.String(validate=validate.OneOf(ROUTING_STRATEGIES + tuple(STRATEGY_ALIASES)),
                                     load_default="simple-shuffle")
    num_retries = fields.Integer(strict=True, validate=_non_negative, load_default=2)
    timeout = fields.Float(validate=_positive, allow_none=True, load_default=None)
    allowed_fails = fields.Integer(strict=True, validate=_non_negative, load_default=3)
    cooldown_time = fields.Float(validate=_non_negative, load_default=5.0)
    fallbacks = fields.List(fields.Dict(keys=fields.String(), values=fields.List(fields.String())),
                            load_default=list)
    context_window_fallbacks = fields.List(fields.Dict(keys=fields.String(), values=fields.List(fields.String())),
                                           load_default=list)
    content_policy_fallbacks = fields.List(fields.Dict(keys=fields.String(), values=fields.List(fields.String())),
                                           load_default=list)
    default_fallbacks = fields.List(fields.String(), load_default=list)
    max_fallbacks = fields.Integer(strict=True, validate=_non_negative, load_default=5)


class LitellmSettingsSchema(_Strict):
    drop_params = fields.Boolean(load_default=False)
    request_timeout = fields.Float(validate=_positive, load_default=600.0)
    json_logs = fields.Boolean(load_default=True)


class GeneralSettingsSchema(_Strict):
    master_key = fields.String(allow_none=True, load_default=None)
    database_url = fields.String(allow_none=True, load_default=None)
    redis_url = fields.String(allow_none=True, load_default=None)
    max_request_body_mb = fields.Float(validate=_positive, load_default=10.0)
    # None = "*" with a master key, no CORS at all without one (a keyless
    # gateway on loopback must not be callable from every page a browser opens).
    cors_allow_origins = fields.List(fields.String(), allow_none=True, load_default=None)
    metrics_token = fields.String(allow_none=True, load_default=None)
    background_health_checks = fields.Boolean(load_default=False)
    health_check_interval = fields.Float(validate=_positive, load_default=300.0)
    log_level = fields.String(load_default="info", validate=_one_of_any_case(LOG_LEVELS))
    disable_metrics = fields.Boolean(load_default=False)


class ConfigSchema(_Strict):
    model_list = fields.List(fields.Nested(ModelEntrySchema), load_default=list)
    router_settings = fields.Nested(RouterSettingsSchema, load_default=lambda: RouterSettingsSchema().load({}))
    litellm_settings = fields.Nested(LitellmSettingsSchema, load_default=lambda: LitellmSettingsSchema().load({}))
    general_settings = fields.Nested(GeneralSettingsSchema, load_default=lambda: GeneralSettingsSchema().load({}))


# --- the validated result -----------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    config_path: Path
    deployments: tuple[Deployment, ...]
    router: RouterSettings
    drop_params: bool = False
    master_key: str | None = field(default=None, repr=False)
    database_url: str = "sqlite:///gateway.db"
    redis_url: str | None = None
    max_request_body_bytes: int = 10 * 1024 * 1024
    cors_allow_origins: tuple[str, ...] = ("*",)
    metrics_token: str | None = field(default=None, repr=False)
    background_health_checks: bool = False
    health_check_interval: float = 300.0
    log_level: str = "info"
    json_logs: bool = True
    metrics: bool = True
    request_timeout: float = 600.0   # the longest a request, or a stream, may run in total
    worker_connections: int = 1000
    state_fd: int | None = None     # shared-memory router state inherited from the gunicorn master
    metrics_dir: str | None = None  # every worker's metric files, prepared by the gunicorn master
    secrets: tuple[str, ...] = field(default=(), repr=False)   # every credential, for redaction
    warnings: tuple[str, ...] = ()

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.model_name for d in self.deployments))

    def stream_lifetime(self, deployment: Deployment) -> float:
        """Seconds a stream from `deployment` may run in all: a reload or stop waits that long, never longer."""
        return max(deployment.timeout, self.request_timeout)

    @property
    def graceful_timeout(self) -> float:
        """What gunicorn gives in-flight requests and streams on reload and stop."""
        longest = max((self.stream_lifetime(d) for d in self.deployments), default=self.request_timeout)
        return longest + DRAIN_MARGIN


def config_path_from_env(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("SHIN_GATEWAY_CONFIG") or DEFAULT_CONFIG)


def remember_validated(text: str) -> None:
    """Hand the text the gunicorn master validated to the workers it forks."""
    os.environ[VALIDATED_TEXT_ENV] = text


def ensure_state_segment(create) -> None:
    """In the gunicorn master, once: make the shared router state the workers it forks inherit."""
    if not os.environ.get(STATE_FD_ENV):
        os.environ[STATE_FD_ENV] = str(create())


def ensure_metrics_directory() -> None:
    """In the gunicorn master, once, before the first fork: an empty directory for the workers' metric files.

    An operator's PROMETHEUS_MULTIPROC_DIR (systemd's RuntimeDirectory) is
    emptied of an earlier run's files; without one the master makes its own in
    /dev/shm (removed at exit, own_metrics_directory). Kept across reloads: counts survive a SIGHUP.
    """
    if os.environ.get(_METRICS_OWN_ENV) or os.environ.get(_METRICS_PREPARED_ENV):
        return
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        os.environ[_METRICS_PREPARED_ENV] = "1"
        return
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    made = tempfile.mkdtemp(prefix="shin-gateway-metrics-", dir=base)
    os.environ[METRICS_DIR_ENV] = os.environ[_METRICS_OWN_ENV] = made


def metrics_directory(environ=None) -> str | None:
    """Where the workers' metric files are (None: not under the gunicorn master, values stay in-process)."""
    return (os.environ if environ is None else environ).get(METRICS_DIR_ENV) or None


def own_metrics_directory() -> str | None:
    """The metrics directory the master made itself, to remove at exit."""
    return os.environ.get(_METRICS_OWN_ENV) or None


def state_segment_fd(environ=None) -> int | None:
    """The shared router state's file descriptor the gunicorn master handed down, if any."""
    value = (os.environ if environ is None else environ).get(STATE_FD_ENV)
    return int(value) if value and value.isdigit() else None


def validated_text() -> str | None:
    return os.environ.get(VALIDATED_TEXT_ENV)


def load_settings(path: str | os.PathLike | None = None, *, providers: Collection[str] | None = None,
                  needs_api_base: Collection[str] = (), environ: dict | None = None,
                  text: str | None = None) -> Settings:
    """Read, resolve and validate the config file; raise ConfigError with path and line.

    `text` (or, in a gunicorn worker, SHIN_GATEWAY_CONFIG_TEXT) is the config
    the master last validated: workers serve exactly that, even if the file
    has since been edited into something invalid.
    """
    config_path = config_path_from_env(path)
    env = os.environ if environ is None else environ
    text = text if text is not None else env.get(VALIDATED_TEXT_ENV)
    try:
        text = text if text is not None else config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read config file: {exc.strerror or exc}") from None
    raw, lines = _parse_yaml(text, config_path)
    missing: dict[tuple, str] = {}
    resolved = _resolve_env(raw, env, (), missing)
    _refuse_keyless(config_path, missing, lines)
    try:
        data = ConfigSchema().load(resolved)
    except ValidationError as exc:
        raise ConfigError(_format_errors(config_path, exc.messages, lines)) from None
    return _build(config_path, data, lines, providers, needs_api_base, missing, env)


def worker_timeouts(environ: dict | None = None) -> tuple[float, float]:
    """Seconds a client has for a request head, and then for its body (tests shorten them)."""
    env = os.environ if environ is None else environ
    return (_float_env(env, "SHIN_GATEWAY_HEAD_TIMEOUT", HEAD_TIMEOUT),
            _float_env(env, "SHIN_GATEWAY_BODY_TIMEOUT", BODY_TIMEOUT))


# --- YAML with line numbers ---------------------------------------------------------------

def _parse_yaml(text: str, path: Path) -> tuple[Any, dict]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple, int] = {}
        data = _construct(loader, node, (), lines) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {exc.problem or exc}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping with model_list, router_settings, …")
    return data, lines


def _construct(loader, node, path: tuple, lines: dict):
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            out[key] = _construct(loader, value_node, path + (key,), lines)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, path + (i,), lines) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _resolve_env(value, env, path: tuple, missing: dict):
    """Replace every `os.environ/NAME` string; an unset or empty variable resolves to None.

    `missing` collects the key path of each such value with its variable name,
    so that the caller decides per key: refuse to start, or refuse to call out.
    """
    if isinstance(value, dict):
        return {k: _resolve_env(v, env, path + (k,), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, env, path + (i,), missing) for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if not env.get(name):
            missing[path] = name
            return None
        return env[name]
    return value


def _refuse_keyless(path: Path, missing: dict, lines: dict) -> None:
    """Fail closed: a key the config names but the environment lacks never means "no key"."""
    errors = []
    for key in FAIL_CLOSED_KEYS:
        name = missing.get(key)
        if name:
            dotted = ".".join(key)
            errors.append(f"  line {_line_for(key, lines)}: {dotted}: environment variable {name} is not set "
                          f"or empty; refusing to start without it (remove {key[-1]} to run without one)")
    if errors:
        raise ConfigError("\n".join([f"{path}: invalid config:", *errors]))


def _format_errors(path: Path, messages, lines: dict) -> str:
    out = [f"{path}: invalid config:"]
    for key_path, message in _flatten(messages, ()):
        line = _line_for(key_path, lines)
        dotted = ".".join(str(k) for k in key_path) or "(top level)"
        if message == "Unknown field.":
            message = "unknown key (not part of the supported config)"
        out.append(f"  line {line}: {dotted}: {message}")
    return "\n".join(out)


def _flatten(messages, prefix):
    if isinstance(messages, dict):
        for key, value in messages.items():
            key_path = prefix if key == "_schema" else prefix + (key,)
            yield from _flatten(value, key_path)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        yield prefix, " ".join(messages)
    elif isinstance(messages, list):
        for item in messages:
            yield from _flatten(item, prefix)
    else:
        yield prefix, str(messages)


def _line_for(key_path: tuple, lines: dict) -> int:
    while key_path not in lines and key_path:
        key_path = key_path[:-1]
    return lines.get(key_path, 1)


# --- from validated data to Settings --------------------------------------------------------

def _build(config_path: Path, data: dict, lines: dict, providers, needs_api_base, missing: dict,
           env) -> Settings:
    litellm = data["litellm_settings"]
    router = data["router_settings"]
    general = data["general_settings"]
    default_timeout = router["timeout"] or litellm["request_timeout"]
    deployments, errors = [], []
    seen_ids: set[str] = set()
    for index, entry in enumerate(data["model_list"]):
        unset = tuple(dict.fromkeys(name for key, name in missing.items() if key[:2] == ("model_list", index)))
        deployment = _deployment(index, entry, default_timeout, lines, unset, litellm["drop_params"], env)
        where = f"  line {deployment.line}: model_list.{index}"
        if providers is not None and deployment.provider not in providers:
            errors.append(f"{where}.litellm_params.model: unknown provider '{deployment.provider}' "
                          f"(supported: {', '.join(sorted(providers))})")
        if deployment.provider in needs_api_base and not deployment.api_base:
            errors.append(f"{where}.litellm_params.api_base: required for provider '{deployment.provider}'")
        if deployment.provider == "bedrock":
            errors += [f"{where}.litellm_params.{problem}" for problem in _bedrock_problems(deployment)]
        if deployment.id in seen_ids:
            errors.append(f"{where}.model_info.id: duplicate deployment id '{deployment.id}'")
        seen_ids.add(deployment.id)
        deployments.append(deployment)
    names = {d.model_name for d in deployments}
    for key in FALLBACK_KEYS:
        for i, rule in enumerate(router[key]):
            for group, targets in rule.items():
                for name in [group, *targets]:
                    if name not in names:
                        line = _line_for(("router_settings", key, i), lines)
                        errors.append(f"  line {line}: router_settings.{key}.{i}: unknown model_name '{name}'")
    for i, name in enumerate(router["default_fallbacks"]):
        if name not in names:
            line = _line_for(("router_settings", "default_fallbacks", i), lines)
            errors.append(f"  line {line}: router_settings.default_fallbacks.{i}: unknown model_name '{name}'")
    if errors:
        raise ConfigError("\n".join([f"{config_path}: invalid config:", *errors]))
    secrets = [d.api_key for d in deployments] + [d.azure_ad_token for d in deployments]
    secrets += [v for d in deployments for k, v in d.aws.items() if k != "aws_region_name"]
    secrets += [v for d in deployments for v in d.extra_headers.values()]
    secrets += [part for d in deployments for part in _url_credentials(d.api_base)]
    secrets += [general["master_key"], general["metrics_token"]]
    secrets += [part for url in (general["database_url"], general["redis_url"]) for part in _url_credentials(url)]
    return Settings(
        config_path=config_path,
        deployments=tuple(deployments),
        router=RouterSettings(
            routing_strategy=STRATEGY_ALIASES.get(router["routing_strategy"], router["routing_strategy"]),
            num_retries=router["num_retries"],
            timeout=router["timeout"], allowed_fails=router["allowed_fails"],
            cooldown_time=router["cooldown_time"],
            fallbacks=_rules(router["fallbacks"]),
            context_window_fallbacks=_rules(router["context_window_fallbacks"]),
            content_policy_fallbacks=_rules(router["content_policy_fallbacks"]),
            default_fallbacks=tuple(router["default_fallbacks"]), max_fallbacks=router["max_fallbacks"]),
        drop_params=litellm["drop_params"],
        master_key=general["master_key"] or None,
        database_url=_database_url(general["database_url"], config_path),
        redis_url=general["redis_url"],
        max_request_body_bytes=int(general["max_request_body_mb"] * 1024 * 1024),
        cors_allow_origins=_cors(general["cors_allow_origins"], general["master_key"]),
        metrics_token=general["metrics_token"],
        background_health_checks=general["background_health_checks"],
        health_check_interval=general["health_check_interval"],
        log_level=general["log_level"].lower(),
        json_logs=litellm["json_logs"],
        metrics=not general["disable_metrics"],
        request_timeout=litellm["request_timeout"],
        worker_connections=_int_env(env, "SHIN_GATEWAY_WORKER_CONNECTIONS", 1000),
        state_fd=state_segment_fd(env),
        metrics_dir=metrics_directory(env),
        secrets=tuple(sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)),
        warnings=tuple(f"environment variable {name} is not set or empty" for name in dict.fromkeys(missing.values())),
    )


def _deployment(index: int, entry: dict, default_timeout: float, lines: dict, unset_env: tuple,
                drop_params: bool, env) -> Deployment:
    params = entry["litellm_params"]
    info = entry.get("model_info") or {}
    provider, _, upstream_model = params["model"].partition("/")
    aws = {k: params[k] for k in AWS_KEYS if params.get(k)}
    if provider == "bedrock":
        if upstream_model.startswith("converse/"):
            upstream_model = upstream_model[len("converse/"):]
        aws = _aws_from_env(aws, env, with_keys=not params.get("api_key"))
    deployment_id = info.get("id") or _stable_id(index, entry["model_name"], params)
    return Deployment(
        id=deployment_id, model_name=entry["model_name"], provider=provider, upstream_model=upstream_model,
        api_base=(params.get("api_base") or None) and params["api_base"].rstrip("/"),
        api_key=params.get("api_key"),
        timeout=params.get("timeout") or default_timeout,
        stream_timeout=params.get("stream_timeout"),
        max_retries=params.get("max_retries"),
        weight=params.get("weight"),
        rpm=params.get("rpm"), tpm=params.get("tpm"),
        organization=params.get("organization"), api_version=params.get("api_version"),
        extra_headers=dict(params.get("extra_headers") or {}), aws=aws,
        azure_ad_token=params.get("azure_ad_token"),
        drop_params=drop_params if params.get("drop_params") is None else params["drop_params"],
        input_cost_per_token=_first(params, info, "input_cost_per_token"),
        output_cost_per_token=_first(params, info, "output_cost_per_token"),
        mode=info.get("mode") or "chat", max_tokens=info.get("max_tokens"),
        health_check_timeout=info.get("health_check_timeout"),
        line=lines.get(("model_list", index)),
        unset_env=unset_env,
    )


def _aws_from_env(aws: dict, env, *, with_keys: bool) -> dict:
    """A bedrock deployment's AWS settings, completed from the variables AWS's own tools read.

    The access keys come from the environment only as a pair, and only when the
    config names neither them nor a Bedrock API key (`api_key`), so a config
    always says which credentials a deployment uses.
    """
    filled = dict(aws)
    keys = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
    if with_keys and not any(k in aws for k in keys):
        found = {k: next((env[n] for n in AWS_ENV[k] if env.get(n)), None) for k in keys}
        if found["aws_access_key_id"] and found["aws_secret_access_key"]:
            filled.update({k: v for k, v in found.items() if v})
    if "aws_region_name" not in filled:
        region = next((env[n] for n in AWS_ENV["aws_region_name"] if env.get(n)), None)
        if region:
            filled["aws_region_name"] = region
    return filled


def _bedrock_problems(deployment: Deployment) -> list[str]:
    """What a bedrock deployment lacks to sign and address its calls."""
    problems = []
    aws = deployment.aws
    if not deployment.api_key and not ("aws_access_key_id" in aws and "aws_secret_access_key" in aws) \
            and not deployment.unset_env:
        problems.append("aws_access_key_id: bedrock needs aws_access_key_id and aws_secret_access_key "
                        "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment), "
                        "or a Bedrock API key as api_key")
    if "aws_region_name" not in aws and not (deployment.api_key and deployment.api_base):
        problems.append("aws_region_name: bedrock needs a region (aws_region_name, or AWS_REGION in the "
                        "environment) to address and sign its calls")
    return problems


def _url_credentials(url: str | None) -> tuple[str, ...]:
    """User and password of an `api_base` like `https://user:pass@host/v1`: secrets like any key."""
    try:
        parts = urlsplit(url or "")
    except ValueError:
        return ()
    return tuple(part for part in (parts.username, parts.password) if part)


def _rules(rules: list[dict]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((group, tuple(targets)) for rule in rules for group, targets in rule.items())


def _first(params: dict, info: dict, key: str) -> float:
    value = params.get(key)
    return float(value if value is not None else info.get(key) or 0.0)


def _stable_id(index: int, model_name: str, params: dict) -> str:
    """Same config → same id in every worker and on every instance (shared cooldown keys)."""
    basis = f"{index}|{model_name}|{params['model']}|{params.get('api_base') or ''}"
    return hashlib.sha256(basis.encode()).hexdigest()[:12]


def _database_url(url: str | None, config_path: Path) -> str:
    if not url:
        return f"sqlite:///{(config_path.parent / 'gateway.db').resolve()}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        relative = url[len("sqlite:///"):]
        return f"sqlite:///{(config_path.parent / relative).resolve()}"
    return url


def _cors(configured: list | None, master_key: str | None) -> tuple[str, ...]:
    if configured is not None:
        return tuple(configured)
    return ("*",) if master_key else ()


def _float_env(env, name: str, default: float) -> float:
    try:
        value = float(env.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def _int_env(env, name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        return default
