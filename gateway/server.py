"""gunicorn integration: the settings `config/gunicorn.conf.py` hands to gunicorn.

gunicorn executes its config file in the master at start and again on every
SIGHUP. Here the master validates the gateway config each time: at start an
invalid config stops the server; on reload it is refused, logged, and the
workers gunicorn forks keep serving the text validated last. The graceful
time of a reload or stop follows the config: the longest a stream may run.

The master also prepares the metrics directory every worker writes to, and
hands gunicorn a logger that writes its own lines as the gateway's are.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import multiprocessing
import shutil
import signal

from gunicorn.glogging import Logger

from .logging import LineFormatter
from .logging import install as install_logging
from .providers import load_config
from .redact import Redactor
from .settings import (ConfigError, config_path_from_env, ensure_metrics_directory, ensure_state_segment,
                       metrics_directory, own_metrics_directory, remember_validated, state_segment_fd, validated_text)
from .store.shared_memory import create_segment, release_worker

log = logging.getLogger("gateway.server")

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
            install_logging(Redactor())
            log.error("shin-gateway: %s", message, extra={"event": "config_invalid", "config": str(path)})
            raise SystemExit(2) from None
        settings = load_config(path, text=validated_text())
        _install_logging(settings)
        log.error("shin-gateway: config reload refused, still serving the previous config:\n%s", message,
                  extra={"event": "reload_refused", "config": str(path)})
    else:
        remember_validated(text)
        _install_logging(settings)
        if reloading:
            log.info("config %s reloaded: %d deployments in %d model groups; replacing the workers", path,
                     len(settings.deployments), len(settings.model_names),
                     extra={"event": "reload", "config": str(path), "model_groups": list(settings.model_names)})
    # Made before the first fork and kept across reloads: cooldowns and
    # in-flight counts survive a SIGHUP, and every worker shares one segment.
    ensure_state_segment(create_segment)
    ensure_metrics_directory()
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
        # In-flight requests and streams finish on reload and stop: no stream may outlive this.
        "graceful_timeout": math.ceil(settings.graceful_timeout),
        "preload_app": False,      # each worker builds its pools after gevent has patched
        "worker_tmp_dir": "/dev/shm",
        "accesslog": None,         # the gateway writes one line per request itself (logging.RequestLog)
        "errorlog": "-",
        "loglevel": settings.log_level,
        "logger_class": "gateway.server.GatewayLogger",
        # gunicorn 27's control socket defaults to one path per user, shared by
        # every instance on the host; the gateway does not use it.
        "control_socket_disable": True,
        "raw_env": [f"SHIN_GATEWAY_WORKER_CONNECTIONS={WORKER_CONNECTIONS}"],
        "worker_exit": _close_service,
        "child_exit": _child_exited,
        "when_ready": _ready if settings.master_key else _ready_keyless,
        "on_exit": _remove_metrics_directory,
    }
    return conf


class GatewayLogger(Logger):
    """gunicorn's own lines (boot, signals, worker exits) as the gateway's: JSON, redacted, at its level."""

    def setup(self, cfg):
        super().setup(cfg)
        settings = load_config(config_path_from_env(), text=validated_text())
        formatter = LineFormatter(Redactor(settings.secrets), settings.json_logs)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(formatter)


def _install_logging(settings) -> None:
    install_logging(Redactor(settings.secrets), settings.log_level, settings.json_logs)


def _remove_metrics_directory(server) -> None:
    own = own_metrics_directory()
    if own:
        shutil.rmtree(own, ignore_errors=True)


def _child_exited(server, worker) -> None:
    """In the master, after any worker exit (a SIGKILL included): its in-flight counts end with it."""
    _release_router_state(server, worker)
    directory = metrics_directory()
    if directory:
        from prometheus_client.multiprocess import mark_process_dead
        mark_process_dead(worker.pid, directory)   # its live gauges go; its counters stay, still summed


def _ready(server) -> None:
    _reload_without_waiting(server)
    settings = load_config(config_path_from_env(), text=validated_text())
    log.info("serving %d deployments in %d model groups on %s with %d workers", len(settings.deployments),
             len(settings.model_names), ", ".join(_bound_addresses(server)), server.num_workers,
             extra={"event": "startup", "config": str(settings.config_path), "workers": server.num_workers,
                    "model_groups": list(settings.model_names), "graceful_timeout": settings.graceful_timeout,
                    "log_level": settings.log_level, "metrics": settings.metrics})


def _reload_without_waiting(arbiter) -> None:
    """Let a reload return as soon as the new workers are started, as gunicorn did before 25.

    gunicorn 25+ ends a reload by waiting, up to graceful_timeout, for the old
    workers to exit, and handles no signal meanwhile. With streams that may
    run for minutes, a second SIGHUP, a SIGTERM (`systemctl stop`) or the
    replacement of a crashed worker would wait as long. The old workers drain
    on their own, on the graceful time they were started with; here the wait's
    deadline is zero for the length of the reload, and the graceful time of a
    stop is what the config says.
    """
    reload, manage_workers = arbiter.reload, arbiter.manage_workers
    state = {"reloading": False, "graceful": None}

    def manage_then_skip_the_wait():
        manage_workers()
        if state["reloading"] and state["graceful"] is None:   # the last step of a reload, before its wait
            state["graceful"] = arbiter.cfg.graceful_timeout
            arbiter.cfg.set("graceful_timeout", 0)

    def reload_without_waiting():
        state.update(reloading=True, graceful=None)
        try:
            reload()
        finally:
            state["reloading"] = False
            if state["graceful"] is not None:
                arbiter.cfg.set("graceful_timeout", state["graceful"])

    arbiter.manage_workers = manage_then_skip_the_wait
    arbiter.reload = reload_without_waiting


def _ready_keyless(server) -> None:
    _refuse_open_keyless(server)
    _ready(server)


def _close_service(server, worker) -> None:
    """In a worker on its way out: give back its router-state slot, write its spend rows, close its pools.

    The master sends a draining worker SIGTERM again every second; past the
    drain, one would end the process by default in the middle of this.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("gateway") if app is not None else None
    if service is not None:
        try:
            service.close()
        except Exception:  # noqa: BLE001 - the worker is exiting either way
            server.log.exception("closing the gateway service failed", extra={"event": "service_close_failed"})


def _release_router_state(server, worker) -> None:
    fd = state_segment_fd()
    if fd is None:
        return
    try:
        release_worker(fd, worker.pid)
    except (OSError, ValueError):
        server.log.exception("could not release the router state of worker %s", worker.pid,
                             extra={"event": "state_release_failed"})


def _refuse_open_keyless(server) -> None:
    """No master key: serve on loopback only, whatever --bind said (command-line flags override the config)."""
    exposed = [address for address in _bound_addresses(server) if not _is_loopback(address)]
    if exposed:
        server.log.error("refusing to serve without a master_key on %s: without general_settings.master_key the "
                         "gateway binds loopback only (127.0.0.1 / ::1)", ", ".join(exposed),
                         extra={"event": "keyless_exposed"})
        server.halt(reason="keyless gateway asked to bind a non-loopback address", exit_status=3)
    server.log.warning("no master_key is set: serving without authentication on loopback only",
                       extra={"event": "no_master_key"})


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
