"""gunicorn settings for Shin Gateway: `gunicorn -c config/gunicorn.conf.py wsgi:app`.

Command-line flags (--bind, --workers, …) override these values.
"""
from gateway.server import gunicorn_settings

globals().update(gunicorn_settings())
