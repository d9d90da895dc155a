"""Shin Gateway: an OpenAI-compatible LLM gateway.

create_app() builds settings → adapters → state → Router → Service and registers the
API; nothing is built at import time, so two configurations can live in one
process and tests need no monkeypatching.
"""
from __future__ import annotations

import os



def create_app(config_path: str | os.PathLike | None = None, settings=None):
    # Imported here, not at module level: the gunicorn master imports this
    # package to validate configs and must not load ssl before gevent patches.
    from flask import Flask

    from . import api
    from .accounting import SpendWriter
    from .admin import KeyAdmin, SpendReports
    from .health import HealthChecker
    from .keys import KeyChecker
    from .limits import Limiter
    from .logging import RequestLog, installed_handler
    from .logging import install as install_logging
    from .providers import build_adapters, load_config
    from .redact import Redactor
    from .routing import Router
    from .service import Service

    settings = settings or load_config(config_path)
    redactor = Redactor(settings.secrets)
    log = install_logging(redactor, settings.log_level, settings.json_logs)
    for warning in settings.warnings:
        log.warning("config %s: %s", settings.config_path, warning, extra={"event": "config_warning"})
    database = _database(settings, log)
    keys = KeyChecker(settings.master_key, database)
    if not keys.auth_enabled:
        log.warning("no master_key is set: the gateway serves without authentication",
                    extra={"event": "no_master_key"})
    adapters = build_adapters(settings.deployments, pool_maxsize=settings.worker_connections, redactor=redactor)
    state, local_state = _router_state(settings, log)
    # Cooldowns are counted and logged by the service, built below (the router is built first).
    router = Router(settings.deployments, settings.router, state,
                    on_cooldown=lambda *cooldown: service.cooldown_started(*cooldown))
    health = HealthChecker(settings.deployments, adapters, state, router.note_probe, log, redactor=redactor,
                           background=settings.background_health_checks)
    if settings.background_health_checks:
        import gevent
        gevent.spawn(health.run_background, settings.health_check_interval)
    spend = SpendWriter(database, log)
    spend.start()
    service = Service(settings, keys, router, adapters, state, health,
                      limiter=Limiter(_limit_state(settings, local_state, log), _prices(settings.deployments),
                                      max((d.timeout for d in settings.deployments), default=600.0)),
                      spend=spend, database=database, admin=KeyAdmin(database, keys.forget),
                      spend_reports=SpendReports(database), metrics=_metrics(settings, state),
                      request_log=RequestLog(handler=installed_handler()))

    app = Flask(__name__, static_folder=None)   # no /static route: the gateway serves no files
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_body_bytes
    app.json.sort_keys = False
    app.url_map.strict_slashes = False
    app.extensions["gateway"] = service
    api.register(app, settings.cors_allow_origins)
    return app


def _router_state(settings, log):
    """The master's shared segment when there is one (gunicorn), else this process's own; Redis on top.

    Returns (the router's state, the segment's own state), the latter for the key limits.
    """
    from .store.shared_memory import SharedMemoryState

    local = None
    if settings.state_fd is not None:
        try:
            local = SharedMemoryState.open(settings.state_fd)
        except (OSError, ValueError) as exc:
            log.warning("shared router state unavailable (%s): this worker keeps its own", exc,
                        extra={"event": "router_state_private"})
    local = local or SharedMemoryState.private()
    if settings.redis_url:
        from .store.redis_state import RedisState
        return RedisState(local, settings.redis_url, log), local
    return local, local


def _limit_state(settings, local, log):
    """Key limits: the segment counts for every worker of this instance; Redis for every instance."""
    if settings.redis_url:
        from .store.redis_limits import RedisLimits
        return RedisLimits(local.limits(), settings.redis_url, log, background=True)
    return local.limits()


def _database(settings, log):
    """Keys and spend; a database that is down at start-up is not fatal (keys answer 503 until it is back)."""
    from .errors import StorageUnavailable
    from .store.database import open_database

    database = open_database(settings.database_url, log)
    try:
        database.migrate()
    except StorageUnavailable as exc:
        log.warning("database unavailable at start-up (%s): virtual keys answer 503 until it is back", exc,
                    extra={"event": "database_unavailable"})
    return database


def _metrics(settings, state):
    """Prometheus metrics, unless general_settings.disable_metrics; summed over workers under gunicorn."""
    if not settings.metrics:
        return None
    from importlib.metadata import PackageNotFoundError, version

    from .metrics import Metrics
    try:
        release = version("shin-gateway")
    except PackageNotFoundError:
        release = "unknown"
    return Metrics(settings.deployments, state, release, settings.metrics_dir)


def _prices(deployments) -> dict[str, tuple[float, float]]:
    """Per model group, the highest prices of its deployments: what a reservation must assume."""
    prices: dict[str, tuple[float, float]] = {}
    for d in deployments:
        known = prices.get(d.model_name, (0.0, 0.0))
        prices[d.model_name] = (max(known[0], d.input_cost_per_token), max(known[1], d.output_cost_per_token))
    return prices
