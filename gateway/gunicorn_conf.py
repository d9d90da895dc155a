"""gunicorn settings for `shin-gateway`, which passes this file's path to `gunicorn -c`.

The same two lines as config/gunicorn.conf.py, kept inside the package so an
install without a checkout still runs; gunicorn executes the file afresh on
every SIGHUP, which re-validates the config.
"""
from gateway.server import gunicorn_settings

globals().update(gunicorn_settings())
