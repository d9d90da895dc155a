"""Log records never carry a credential: a filter redacts every message and traceback."""
from __future__ import annotations

import logging

from .redact import Redactor


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor):
        super().__init__()
        self._redact = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        record.msg, record.args = self._redact(message), None
        return True


def install(redactor: Redactor) -> logging.Logger:
    """Route the gateway's logs through a redacting handler (to stderr, which gunicorn/journald keep)."""
    logger = logging.getLogger("gateway")
    if not any(isinstance(f, RedactingFilter) for h in logger.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter(redactor))
        logger.addHandler(handler)
        logger.propagate = False
    for handler in logger.handlers:
        for existing in handler.filters:
            if isinstance(existing, RedactingFilter):
                existing._redact = redactor
    logger.setLevel(logging.INFO)
    return logger
