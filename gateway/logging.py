"""Log lines: one JSON object per line (or one plain line), redacted on every handler.

Every record, the gateway's, gunicorn's own (server.py hands this formatter
to gunicorn's logger) and Python warnings alike, goes through LineFormatter,
which redacts the message, the traceback and every field's value: no key,
token, Authorization value or URL credential can be printed on any path.
A record's `extra` fields become fields of its line; `event` names what
happened (docs/troubleshooting.md lists every one).
"""
from __future__ import annotations

import logging
import os
import sys
import time

import orjson

from .redact import Redactor

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
_LEVEL_NAMES = {number: name for name, number in LEVELS.items()}
# What every LogRecord has; anything else on a record came from `extra=` and is a field of its line.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime",
                                                                                          "event"}
_PLAIN = frozenset({int, float, bool, type(None)})   # values a line shows as they are
_DEFAULT_EVENTS = {"gunicorn.error": "server", "gunicorn.access": "server", "py.warnings": "warning"}


class LineFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor, as_json: bool = True):
        super().__init__()
        self._redact = redactor
        self._as_json = as_json
        self._second, self._prefix = -1, ""

    def format(self, record: logging.LogRecord) -> str:
        """The line, every text in it redacted: message, traceback and each field's value.

        Values are redacted one by one, not the finished line: a field's name
        ("prompt_tokens", "key_alias") would set the patterns off on every line.
        """
        fields = record.__dict__
        exception = None
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        return self.line(record.created, record.levelname.lower(), record.name,
                         fields.get("event") or _DEFAULT_EVENTS.get(record.name, "log"), record.getMessage(),
                         {k: fields[k] for k in fields if k not in _RECORD_ATTRIBUTES}, record.process, exception)

    def line(self, created: float, level: str, logger: str, event: str, message: str, fields: dict, pid: int,
             exception: str | None = None) -> str:
        redact = self._redact
        line = {"ts": self._timestamp(created), "level": level, "logger": logger, "event": event,
                "message": redact(message), "pid": pid}
        for key, value in fields.items():
            kind = type(value)
            line[key] = value if kind in _PLAIN else redact(value) if kind is str else _redacted(value, redact)
        if exception is not None:
            line["exception"] = redact(exception)
        text = orjson.dumps(line, default=str).decode() if self._as_json else _plain(line)
        if not text.isascii():   # JSON allows these raw, but many readers split lines on them
            text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")
        return text

    def _timestamp(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds; the part up to the second is made once a second."""
        second = int(created)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%03dZ" % (self._prefix, (created - second) * 1000)


def _redacted(value, redact):
    """A list or mapping field, its texts redacted (what a JSON dump of it would show)."""
    if isinstance(value, (list, tuple)):
        return [v if type(v) in _PLAIN else redact(v) if type(v) is str else _redacted(v, redact) for v in value]
    if isinstance(value, dict):
        return {redact(str(k)): _redacted([v], redact)[0] for k, v in value.items()}
    return redact(str(value))


def install(redactor: Redactor, level: str = "info", as_json: bool = True) -> logging.Logger:
    """Send every logger's records (the root's handler) through LineFormatter to stderr.

    stderr is what gunicorn's own lines use and what systemd's journal keeps.
    Installing again (a second app in one process) replaces the handler.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, LineFormatter):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(redactor, as_json))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)
    # Nothing on a line needs the caller's file and line, or the thread's and process's names:
    # not looking them up saves a frame walk and two lookups per record (the logging HOWTO's advice).
    logging._srcfile = None
    logging.logThreads = logging.logMultiprocessing = False
    log = logging.getLogger("gateway")
    log.setLevel(logging.NOTSET)
    return log


class RequestLog:
    """One line per request: who, which model and deployment, how it ended, how long, how many tokens.

    Probes and scrapes (the routes a load balancer or Prometheus polls) are
    logged at DEBUG, so that they do not drown the requests at INFO.
    """

    def __init__(self, logger: logging.Logger | None = None, handler: logging.StreamHandler | None = None):
        self._log = logger or logging.getLogger("gateway.request")
        # The handler install() made: a request's line is formatted and written by it directly,
        # without a LogRecord and the logging machinery around it (a quarter of the cost of a line).
        self._handler = handler
        self._pid = os.getpid()

    def enabled(self, quiet: bool) -> bool:
        return self._log.isEnabledFor(logging.DEBUG if quiet else logging.INFO)

    def write(self, trace, method: str, path: str, status: int, ended: float, quiet: bool = False) -> None:
        level = logging.DEBUG if quiet else (logging.WARNING if status >= 500 else logging.INFO)
        usage = trace.usage
        fields = {"request_id": trace.request_id, "method": method, "path": path,
                  "status": status, "latency_ms": round((ended - trace.started) * 1000, 1)}
        if trace.model_group:
            fields.update(model_group=trace.model_group, deployment=trace.deployment_id or None,
                          key_alias=trace.key_label, stream=trace.stream,
                          ttft_ms=round((trace.first_byte - trace.started) * 1000, 1) if trace.first_byte else None,
                          prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0,
                          cost=trace.cost or 0.0, retries=trace.retries, fallbacks=trace.fallbacks)
        elif trace.key_label is not None:
            fields["key_alias"] = trace.key_label
        if trace.error_code:
            fields["error_type"] = trace.error_code
        handler = self._handler
        if handler is None:
            self._log.log(level, "%s %s %s", method, path, status, extra={"event": "request", **fields})
            return
        text = handler.formatter.line(time.time(), _LEVEL_NAMES[level], self._log.name, "request",
                                      f"{method} {path} {status}", fields, self._pid)
        stream = handler.stream
        stream.write(text + "\n")
        stream.flush()


def installed_handler() -> logging.StreamHandler | None:
    """The root handler install() made, for RequestLog to write through."""
    return next((h for h in logging.getLogger().handlers if isinstance(h.formatter, LineFormatter)), None)


def _plain(line: dict) -> str:
    head = f"{line.pop('ts')} {line.pop('level').upper()} {line.pop('logger')} [{line.pop('event')}] "
    message = line.pop("message")
    exception = line.pop("exception", None)
    rest = " ".join(f"{key}={value}" for key, value in line.items() if value is not None)
    return head + message + (f" ({rest})" if rest else "") + (f"\n{exception}" if exception else "")
