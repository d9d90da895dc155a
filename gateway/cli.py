"""`shin-gateway`: run the gateway under gunicorn, or check a config file.

    shin-gateway [--config PATH] [--host HOST] [--port PORT] [--workers N]
    shin-gateway check-config [--config PATH] [--require-master-key]
    shin-gateway db upgrade [--config PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.command == "db") != (args.action is not None):
        parser.error("`db` takes an action: shin-gateway db upgrade [--config PATH]")
    config = _config_path(args.config)
    if args.command == "check-config":
        return check_config(config, require_master_key=args.require_master_key)
    if args.command == "db":
        return db_upgrade(config)
    return serve(config, args.host, args.port, args.workers)


def check_config(config: Path, *, require_master_key: bool = False) -> int:
    """Exit status 0 for a config that may be served; `require_master_key` also refuses a keyless one."""
    from . import create_app
    from .settings import ConfigError

    try:
        app = create_app(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    settings = app.extensions["gateway"].settings
    if require_master_key and not settings.master_key:
        print(f"{config}: general_settings.master_key is not set: refusing a config that would serve "
              f"without authentication (set master_key: os.environ/LITELLM_MASTER_KEY)", file=sys.stderr)
        return 1
    print(f"{config}: OK — {len(settings.deployments)} deployments in "
          f"{len(settings.model_names)} model groups: {', '.join(settings.model_names)}")
    return 0


def db_upgrade(config: Path) -> int:
    """Create or migrate the keys and spend tables (what every worker also does at start-up)."""
    import logging

    from .errors import StorageUnavailable
    from .settings import ConfigError, load_settings
    from .store.database import open_database

    try:
        url = load_settings(config).database_url
        database = open_database(url, logging.getLogger("gateway.store"))
    except (ConfigError, ValueError, StorageUnavailable) as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        version = database.migrate()
    except StorageUnavailable as exc:
        print(f"{config}: cannot upgrade the database: {exc}", file=sys.stderr)
        return 1
    finally:
        database.close()
    print(f"{config}: {database.backend} database {database.where} is at schema version {version}")
    return 0


def serve(config: Path, host: str | None, port: int | None, workers: int | None) -> int:
    """Replace this process by the gunicorn master (so signals and systemd see gunicorn itself)."""
    os.environ["SHIN_GATEWAY_CONFIG"] = str(config)
    # The same settings as config/gunicorn.conf.py and wsgi.py, taken from the
    # package so that a non-editable install needs no checkout.
    argv = [sys.executable, "-m", "gunicorn", "-c", str(Path(__file__).with_name("gunicorn_conf.py"))]
    if host or port:
        from .server import PORT
        argv += ["--bind", f"{_host(host, config)}:{port or PORT}"]
    if workers:
        argv += ["--workers", str(workers)]
    argv.append("gateway:create_app()")
    os.execv(sys.executable, argv)
    return 0  # not reached


def _host(host: str | None, config: Path) -> str:
    if host:
        return host
    from .providers import load_config
    from .settings import ConfigError
    try:
        return "0.0.0.0" if load_config(config).master_key else "127.0.0.1"
    except ConfigError:
        return "127.0.0.1"  # gunicorn's config step reports the error and stops


def _config_path(explicit: str | None) -> Path:
    """--config, else $SHIN_GATEWAY_CONFIG, else config/config.yaml here or in the project."""
    path = Path(explicit or os.environ.get("SHIN_GATEWAY_CONFIG") or "config/config.yaml")
    if not path.exists() and not explicit and not os.environ.get("SHIN_GATEWAY_CONFIG"):
        path = PROJECT_ROOT / "config" / "config.yaml"
    return path.resolve()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shin-gateway", description="OpenAI-compatible LLM gateway.")
    parser.add_argument("command", nargs="?", choices=["serve", "check-config", "db"], default="serve")
    parser.add_argument("action", nargs="?", choices=["upgrade"], help="db: what to do (upgrade)")
    parser.add_argument("--config", help="config file (default: $SHIN_GATEWAY_CONFIG or config/config.yaml)")
    parser.add_argument("--host", help="address to bind (default 0.0.0.0 with a master key, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 4000)")
    parser.add_argument("--workers", type=int, help="gevent worker processes (default: one per CPU)")
    parser.add_argument("--require-master-key", action="store_true",
                        help="check-config: fail unless the config sets a master key (what systemd runs)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
