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
    from .health import HealthChecker
    from .keys import KeyChecker
    from .logging import install as install_logging
    from .providers import build_adapters, load_config
    from .redact import Redactor
    from .routing import Router
    from .service import Service

    settings = settings or load_config(config_path)
    redactor = Redactor(settings.secrets)
    log = install_logging(redactor)
    for warning in settings.warnings:
        log.warning("config %s: %s", settings.config_path, warning)
    keys = KeyChecker(settings.master_key)
    if not keys.auth_enabled:
        log.warning("no master_key is set: the gateway serves without authentication")
    adapters = build_adapters(settings.deployments, pool_maxsize=settings.worker_connections, redactor=redactor)
    state = _router_state(settings, log)
    router = Router(settings.deployments, settings.router, state)
    health = HealthChecker(settings.deployments, adapters, state, router.note_probe, log, redactor=redactor,
                           background=settings.background_health_checks)
    if settings.background_health_checks:
        import gevent
        gevent.spawn(health.run_background, settings.health_check_interval)
    service = Service(settings, keys, router, adapters, state, health)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_body_bytes
    app.json.sort_keys = False
    app.url_map.strict_slashes = False
    app.extensions["gateway"] = service
    api.register(app, settings.cors_allow_origins)
    return app


def _router_state(settings, log):
    """The master's shared segment when there is one (gunicorn), else this process's own; Redis on top."""
    from .store.shared_memory import SharedMemoryState

    state = None
    if settings.state_fd is not None:
        try:
            state = SharedMemoryState.open(settings.state_fd)
        except (OSError, ValueError) as exc:
            log.warning("shared router state unavailable (%s): this worker keeps its own", exc)
    state = state or SharedMemoryState.private()
    if settings.redis_url:
        from .store.redis_state import RedisState
        state = RedisState(state, settings.redis_url, log)
    return state
