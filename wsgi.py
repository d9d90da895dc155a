"""WSGI entry point for gunicorn: `gunicorn -c config/gunicorn.conf.py wsgi:app`."""
from gateway import create_app

app = create_app()
