"""gunicorn settings as a module (`gunicorn -c python:gateway.gunicorn_conf`), for installs without a checkout."""
from gateway.server import gunicorn_settings

globals().update(gunicorn_settings())
