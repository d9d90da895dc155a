"""gunicorn integration: the settings `config/gunicorn.conf.py` hands to gunicorn.

gunicorn executes its config file in the master at start and again on every
SIGHUP. Here the master validates the gateway config each time: at start an
invalid config stops the server; on reload it is refused, logged, and the
workers gunicorn forks keep serving the text validated last.
"""
from __future__ import annotations

import ipaddress
import multiprocessing
import sys

from .providers import load_config
from .settings import (ConfigError, config_path_from_env, ensure_state_segment, remember_validated, state_segment_fd,
                       validated_text)
from .store.shared_memory import create_segment, release_worker

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
            raise SystemExit(2) from None
        sys.stderr.write(f"shin-gateway: config reload refused, still serving the previous config:\n{message}\n")
        settings = load_config(path, text=validated_text())
    else:
        remember_validated(text)
    # Made before the first fork and kept across reloads: cooldowns and
    # in-flight counts survive a SIGHUP, and every worker shares one segment.
    ensure_state_segment(create_segment)
    host = "0.0.0.0" if settings.master_key else "127.0.0.1"
    conf = {
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
        "worker_exit": _close_service,
        "child_exit": _release_router_state,
    }
    if not settings.master_key:
        conf["when_ready"] = _refuse_open_keyless
    return conf


def _close_service(server, worker) -> None:
    """In a worker on its way out: give back its router-state slot and close its pools."""
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("gateway") if app is not None else None
    if service is not None:
        try:
            service.close()
        except Exception:  # noqa: BLE001 - the worker is exiting either way
            server.log.exception("closing the gateway service failed")


def _release_router_state(server, worker) -> None:
    """In the master, after any worker exit (a SIGKILL included): its in-flight counts end with it."""
    fd = state_segment_fd()
    if fd is None:
        return
    try:
        release_worker(fd, worker.pid)
    except (OSError, ValueError):
        server.log.exception("could not release the router state of worker %s", worker.pid)


def _refuse_open_keyless(server) -> None:
    """No master key: serve on loopback only, whatever --bind said (command-line flags override the config)."""
    exposed = [address for address in _bound_addresses(server) if not _is_loopback(address)]
    if exposed:
        server.log.error("refusing to serve without a master_key on %s: without general_settings.master_key the "
                         "gateway binds loopback only (127.0.0.1 / ::1)", ", ".join(exposed))
        server.halt(reason="keyless gateway asked to bind a non-loopback address", exit_status=3)
    server.log.warning("no master_key is set: serving without authentication on loopback only")


def _bound_addresses(server) -> list[str]:
    addresses = []
    for listener in server.LISTENERS:
        name = listener.sock.getsockname()
        if isinstance(name, tuple):
            addresses.append(name[0])
    return addresses


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False
