"""The gunicorn worker: gevent's pywsgi handler, fair accepts, prompt graceful stops.

gunicorn's `gevent_pywsgi` worker, as shipped, writes a response's head and
body in two system calls, lets one worker accept a whole burst of
connections, and on stop or reload keeps idle keep-alive connections — which
nginx and every SDK pool hold — open until `graceful_timeout`, serving the
old config on them. Here, once a worker is
told to stop, it accepts nothing more, answers what is in flight or arrives
within DRAIN_GRACE with `Connection: close`, and ends idle connections.
A connection idle for longer than gunicorn's `keepalive` is closed too.

Slow clients get deadlines, so that trickling bytes cannot hold a worker's
connection slots: a request head must arrive within HEAD_TIMEOUT (from accept,
or from the first byte of a kept-alive connection's next request), its body
within BODY_TIMEOUT after the head; late bodies get a 408 and the connection
is closed. Sockets are only ever polled, never select(2)ed, which fails on
descriptors of 1024 and above.
"""
from __future__ import annotations

import logging
import resource
import socket
import uuid

import gevent
import orjson
from gevent.monkey import get_original
from gevent.pywsgi import Input
from gevent.socket import wait_read
from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from .errors import RequestTimeout
from .settings import worker_timeouts

COALESCE_LIMIT = 65536  # larger first writes go out on their own rather than be copied
DRAIN_GRACE = 1.0   # seconds a kept-alive connection has, once a stop begins, to send its next request

APP_LOAD_ERROR, WORKER_BOOT_ERROR = Arbiter.APP_LOAD_ERROR, Arbiter.WORKER_BOOT_ERROR

_poll = get_original("select", "poll")
_POLLIN = get_original("select", "POLLIN")



class _Refusal:
    """A whole OpenAI-shaped JSON error answer, for what is refused before the app sees a request."""

    def __init__(self, status: str, message: str, code: str, type_: str = "invalid_request_error"):
        self.status = status
        body = orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})
        self._head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
                      f"Content-Length: {len(body)}\r\nx-request-id: ").encode()
        self._body = body

    def answer(self) -> bytes:
        return self._head + uuid.uuid4().hex.encode() + b"\r\n\r\n" + self._body


TIMEOUT = _Refusal("408 Request Timeout", "The request head did not arrive in time.", "request_timeout")
BAD_REQUEST = _Refusal("400 Bad Request", "The request could not be read as HTTP/1.1 (a malformed request line, "
                       "too many or too long headers, or a broken chunked body).", "bad_request")
URI_TOO_LONG = _Refusal("414 URI Too Long", "The request line is too long.", "uri_too_long")
INTERNAL_ERROR = _Refusal("500 Internal Server Error", "The gateway hit an internal error; it has been logged.",
                          "internal_error", "api_error")
_REFUSALS = {400: BAD_REQUEST, 500: INTERNAL_ERROR}


def readable_now(sock) -> bool:
    """Has this socket bytes (or EOF) to read right now? One poll(2), fine for any descriptor number."""
    poller = _poll()
    poller.register(sock.fileno(), _POLLIN)
    return bool(poller.poll(0))


class _HeadTimeout(Exception):
    """The request line and headers did not arrive within HEAD_TIMEOUT."""


class _BodyTimeout(RequestTimeout):
    def __init__(self):
        super().__init__("The request body did not arrive in time.")

    def headers(self) -> dict:
        return {**super().headers(), "Connection": "close"}


class _DeadlineInput(Input):
    """The request body, on a clock started when its head was read: past BODY_TIMEOUT a read raises a 408.

    One timer per connection, started for a request with a body and stopped
    once the body is in (or the response is done): no timer per read.
    """
    __slots__ = ("timer", "expired")

    def read(self, length=None):
        return self._timed(super().read, length)

    def readline(self, size=None):
        return self._timed(super().readline, size)

    def _timed(self, read, size) -> bytes:
        if self.expired:
            raise _BodyTimeout()
        try:
            data = read(size)
        except _BodyTimeout:
            self.expired = True
            raise
        if not data or (not self.chunked_input and self.position >= (self.content_length or 0)):
            self.timer.cancel()   # the whole body is in
        return data

    def _discard(self):
        try:
            super()._discard()
        except _BodyTimeout:
            self.expired = True
        finally:
            self.timer.cancel()


_http_log = logging.getLogger("gateway.http")


class _HttpLog:
    """pywsgi's error log (and the requests' `wsgi.errors`) as log records, not bare lines on stderr."""

    def write(self, text: str) -> None:
        text = text.rstrip("\n")
        if text:
            _http_log.warning("%s", text, extra={"event": "http_error"})

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


class _Stopping(Exception):
    """Thrown into a handler that is waiting for a next request when its worker stops."""


class _Server(PyWSGIServer):
    # Take one connection per wake-up, so the workers sharing the listening
    # socket split a burst of connections instead of one taking it all.
    max_accept = 1
    idle_timeout: float | None = None   # gunicorn's `keepalive`, set by the worker
    live: list["_Server"] = []

    def __init__(self, *args, **kwargs):
        kwargs["error_log"] = _HttpLog()
        super().__init__(*args, **kwargs)
        self.stopping = False
        self.waiting: set = set()   # sockets whose handler waits for a request line
        _Server.live.append(self)

    def begin_stop(self) -> None:
        self.stopping = True
        self.stop_accepting()
        loop = gevent.get_hub().loop
        for sock in list(self.waiting):
            loop.run_callback(self._stop_waiting, sock)

    def _stop_waiting(self, sock) -> None:
        """In the hub: wake a handler still waiting for its next request line, and no other.

        gevent's own cancel_wait checks only that the socket's read watcher is
        active when it delivers; a handler whose request line arrived in the
        meantime waits on that same watcher for the request's body, and would
        get the exception there (a 500). Here the check and the throw happen
        in one hub callback, with no handler running in between.
        """
        watcher = sock._read_event
        if sock in self.waiting and watcher.active:
            handler = getattr(watcher.callback, "__self__", None)
            if handler is not None:
                handler.throw(_Stopping())


class _Handler(PyWSGIHandler):
    head_timeout = 10.0
    body_timeout = 30.0
    _head_timer = None      # gevent.Timeout, one per connection, for the head
    _body_timer = None      # and one for the body
    _kept_alive = False

    def read_requestline(self):
        server = self.server
        if server.stopping:
            return self._requestline_while_stopping()
        server.waiting.add(self.socket)
        try:
            if not self._kept_alive:  # a new connection: its head is due HEAD_TIMEOUT after accept
                self._kept_alive = True
                return self._requestline_within_head_timeout()
            with gevent.Timeout(server.idle_timeout, False):
                if not self.rfile.peek(1):
                    return ""  # the client closed its kept-alive connection
                return self._requestline_within_head_timeout()
            return ""  # idle past gunicorn's `keepalive`: end the connection, free its slot
        except _Stopping:
            self._stop_head_timer()
            return self._requestline_while_stopping()
        finally:
            server.waiting.discard(self.socket)

    def _requestline_within_head_timeout(self) -> str:
        """Start the head's clock; read_request (the headers) stops it."""
        if self._head_timer is None:
            self._head_timer = gevent.Timeout(self.head_timeout, _HeadTimeout)
        self._head_timer.start()
        try:
            return super().read_requestline()
        except _HeadTimeout:
            return self._timed_out()

    def handle_one_request(self):
        try:
            result = super().handle_one_request()
        finally:
            self._stop_head_timer()
        if isinstance(result, tuple) and result[0] == "414":
            return "414", URI_TOO_LONG.answer()   # pywsgi's own has no body: every error here is JSON
        return result

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._stop_head_timer()

    def _handle_client_error(self, ex):
        if isinstance(ex, _HeadTimeout):
            self.close_connection = True
            return "408", TIMEOUT.answer()
        # pywsgi's own would print a traceback to bare stderr for some of these (a client's bad input)
        _http_log.info("unreadable request from %s: %s", self.client_address,
                       getattr(ex, "formatted_message", None) or str(ex) or type(ex).__name__,
                       extra={"event": "bad_request"})
        return "400", BAD_REQUEST.answer()

    def _send_error_response_if_possible(self, error_code):
        """pywsgi's own 400/500 answers, in the OpenAI error shape (they are text/plain, or empty)."""
        if self.response_length or self.headers_sent:
            self.close_connection = True
            return
        self.close_connection = True
        refusal = _REFUSALS[error_code]
        self.status = refusal.status
        try:
            self._sendall(refusal.answer())
        except OSError:
            pass

    def _timed_out(self) -> str:
        """The head did not come in time: say so, and end the connection."""
        self._stop_head_timer()
        self.status = "408"
        self.close_connection = True
        try:
            self.socket.sendall(TIMEOUT.answer())
        except OSError:
            pass
        return ""

    def get_environ(self):
        environ = super().get_environ()
        body = self.wsgi_input
        bounded = _DeadlineInput(body.rfile, body.content_length, socket=body.socket,
                                 chunked_input=body.chunked_input)
        if self._body_timer is None:
            self._body_timer = gevent.Timeout(self.body_timeout, _BodyTimeout)
        bounded.timer = self._body_timer
        bounded.expired = False
        if body.content_length or body.chunked_input:
            self._body_timer.start()
        self.wsgi_input = bounded
        if environ.get("wsgi.input") is body:
            environ["wsgi.input"] = bounded
        return environ

    def handle_one_response(self):
        try:
            super().handle_one_response()
        finally:
            self._body_timer.cancel()
        if self.wsgi_input.expired:
            self.close_connection = True  # the rest of a late body is still on its way: no next request

    def _requestline_while_stopping(self):
        """Serve a request already on its way; end a connection with none."""
        if not readable_now(self.socket):
            try:
                wait_read(self.socket.fileno(), timeout=DRAIN_GRACE)
            except socket.timeout:
                return ""
        return super().read_requestline()

    def _write_with_headers(self, data):
        """Status line, headers and the first body bytes in one send(2).

        pywsgi writes the head and the body separately: a second system call
        per response, and a small second segment that can wait on a delayed ACK.
        """
        self.headers_sent = True
        self.finalize_headers()
        head = [b"HTTP/1.1 ", self.status, b"\r\n"]
        for name, value in self.response_headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        if data and len(data) <= COALESCE_LIMIT:
            if self.response_use_chunked:
                head += (b"%x\r\n" % len(data), data, b"\r\n")
            else:
                head.append(data)
            self._sendall(b"".join(head))
        else:
            self._sendall(b"".join(head))
            self._write(data)

    def _sendall(self, data):
        """One send(2) when the kernel takes it all, as it nearly always does.

        gevent's sendall asks the socket for its buffer size (a system call) on
        every call (about 4% of a relayed stream chunk, profiled).
        """
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except socket.error as ex:
            self.status = "socket error: %s" % ex
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def start_response(self, status, headers, exc_info=None):
        if self.server.stopping or self.wsgi_input.expired:
            headers = [h for h in headers if h[0].lower() != "connection"] + [("Connection", "close")]
        return super().start_response(status, headers, exc_info)


class GatewayWorker(GeventPyWSGIWorker):
    server_class = _Server
    wsgi_handler = _Handler

    def init_process(self):
        _Server.idle_timeout = self.cfg.keepalive or None
        _Handler.head_timeout, _Handler.body_timeout = worker_timeouts()
        _raise_open_files_limit(self.worker_connections)
        _log_hub_errors()
        super().init_process()

    def load_wsgi(self):
        """An app that fails to load is logged as one line, and the worker exits with gunicorn's own code.

        gunicorn would also print the bare exception text to stderr: the one
        line of its output that would not be a log record.
        """
        try:
            super().load_wsgi()
        except Exception as exc:
            self.log.exception("the gateway failed to load in worker %s", self.pid, extra={"event": "uncaught"})
            raise SystemExit(APP_LOAD_ERROR if isinstance(exc, AppImportError) else WORKER_BOOT_ERROR) from None

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        for server in _Server.live:
            server.begin_stop()


def _log_hub_errors() -> None:
    """An exception that escapes a greenlet goes to the log as one redacted line, not as bare text on stderr."""
    hub = gevent.get_hub()
    log = logging.getLogger("gateway.worker")

    def print_exception(context, kind, value, tb):
        log.error("uncaught %s in %s", getattr(kind, "__name__", kind), context,
                  exc_info=(kind, value, tb) if value is not None else None, extra={"event": "uncaught"})
    hub.print_exception = print_exception


def _raise_open_files_limit(connections: int) -> None:
    """Each connection may hold a client socket and an upstream socket: lift the soft limit to fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass
