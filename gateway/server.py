"""gunicorn integration: the settings `config/gunicorn.conf.py` hands to gunicorn.

gunicorn executes its config file in the master at start and again on every
SIGHUP. Here the master validates the gateway config each time: at start an
invalid config stops the server; on reload it is refused, logged, and the
workers gunicorn forks keep serving the text validated last.
"""
from __future__ import annotations

import multiprocessing
import sys

from .providers import load_config
from .settings import ConfigError, config_path_from_env, remember_validated, validated_text

PORT = 4000
WORKER_CONNECTIONS = 1000


def gunicorn_settings() -> dict:
    reloading = validated_text() is not None
    path = config_path_from_env()
    try:
        text = path.read_text(encoding="utf-8")
        settings = load_config(path, text=text)
    except (OSError, ConfigError) as exc:
        message = str(exc) if isinstance(exc, ConfigError) else f"{path}: cannot read config file: {exc}"
        if not reloading:
            sys.stderr.write(f"shin-gateway: {message}\n")
            raise SystemExit(2)
        sys.stderr.write(f"shin-gateway: config reload refused, still serving the previous config:\n{message}\n")
        settings = load_config(path, text=validated_text())
    else:
        remember_validated(text)
    host = "0.0.0.0" if settings.master_key else "127.0.0.1"
    return {
        "bind": [f"{host}:{PORT}"],
        "workers": multiprocessing.cpu_count(),
        # gunicorn's gevent worker on gevent's HTTP handler, tuned in worker.py:
        # head and body in one write, fair accepts, prompt graceful stops.
        "worker_class": "gateway.worker.GatewayWorker",
        "worker_connections": WORKER_CONNECTIONS,
        # Seconds an idle keep-alive connection is kept (worker.py): longer than
        # nginx's upstream keepalive_timeout (60 s), so nginx closes first.
        "keepalive": 75,
        "timeout": 60,             # heartbeat only: gevent workers answer it while streaming
        "graceful_timeout": 120,   # in-flight requests and streams finish on reload/stop
        "preload_app": False,      # each worker builds its pools after gevent has patched
        "worker_tmp_dir": "/dev/shm",
        "accesslog": None,
        "errorlog": "-",
        # gunicorn 27's control socket defaults to one path per user, shared by
        # every instance on the host; the gateway does not use it.
        "control_socket_disable": True,
        "raw_env": [f"SHIN_GATEWAY_WORKER_CONNECTIONS={WORKER_CONNECTIONS}"],
    }
