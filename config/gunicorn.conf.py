"""gunicorn settings for Shin Gateway: `gunicorn -c config/gunicorn.conf.py wsgi:app`.

Command-line flags (--bind, --workers, …) override these values.
"""
from gateway.gunicorn_conf import *  # noqa: F401,F403  (bind, workers, worker_class, …)
