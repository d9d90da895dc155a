"""gunicorn settings for Shin Gateway: `gunicorn -c config/gunicorn.conf.py wsgi:app`.

gunicorn runs this file again on every SIGHUP, which re-validates the config.
Command-line flags (--bind, --workers, …) override these values.
"""
from gateway.server import gunicorn_settings

globals().update(gunicorn_settings())
