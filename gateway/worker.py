"""The gunicorn worker: gevent's pywsgi handler, fair accepts, prompt graceful stops.

gunicorn's `gevent_pywsgi` worker, as shipped, writes a response's head and
body in two system calls, lets one worker accept a whole burst of
connections, and on stop or reload keeps idle keep-alive connections — which
nginx and every SDK pool hold — open until `graceful_timeout`, serving the
old config on them. Here, once a worker is
told to stop, it accepts nothing more, answers what is in flight or arrives
within DRAIN_GRACE with `Connection: close`, and ends idle connections.
A connection idle for longer than gunicorn's `keepalive` is closed too.
"""
from __future__ import annotations

import socket

import gevent
from gevent.monkey import get_original
from gevent.socket import wait_read
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

COALESCE_LIMIT = 65536  # larger first writes go out on their own rather than be copied
DRAIN_GRACE = 1.0   # seconds a kept-alive connection has, once a stop begins, to send its next request

_select = get_original("select", "select")


class _Stopping(Exception):
    """Thrown into a handler that is waiting for a next request when its worker stops."""


class _Server(PyWSGIServer):
    # Take one connection per wake-up, so the workers sharing the listening
    # socket split a burst of connections instead of one taking it all.
    max_accept = 1
    idle_timeout: float | None = None   # gunicorn's `keepalive`, set by the worker
    live: list["_Server"] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stopping = False
        self.waiting: set = set()   # sockets whose handler waits for a request line
        _Server.live.append(self)

    def begin_stop(self) -> None:
        self.stopping = True
        self.stop_accepting()
        hub = gevent.get_hub()
        for sock in list(self.waiting):
            # Throws only if the handler still waits on this read (gevent checks
            # when it delivers), so a request that just arrived is never cut.
            hub.cancel_wait(sock._read_event, _Stopping())


class _Handler(PyWSGIHandler):
    def read_requestline(self):
        server = self.server
        if server.stopping:
            return self._requestline_while_stopping()
        server.waiting.add(self.socket)
        try:
            with gevent.Timeout(server.idle_timeout, False):
                return super().read_requestline()
            return ""  # idle past gunicorn's `keepalive`: end the connection, free its slot
        except _Stopping:
            return self._requestline_while_stopping()
        finally:
            server.waiting.discard(self.socket)

    def _requestline_while_stopping(self):
        """Serve a request already on its way; end a connection with none."""
        readable, _, _ = _select([self.socket], [], [], 0)
        if not readable:
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
        if self.server.stopping:
            headers = [h for h in headers if h[0].lower() != "connection"] + [("Connection", "close")]
        return super().start_response(status, headers, exc_info)


class GatewayWorker(GeventPyWSGIWorker):
    server_class = _Server
    wsgi_handler = _Handler

    def init_process(self):
        _Server.idle_timeout = self.cfg.keepalive or None
        super().init_process()

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        for server in _Server.live:
            server.begin_stop()
