"""The gunicorn worker: gevent's pywsgi handler, fair accepts, prompt graceful stops.

gunicorn's `gevent_pywsgi` worker answers with one write per response (the
plain `gevent` worker uses two), but as shipped it lets one worker accept a
whole burst of connections, and on stop or reload it keeps idle keep-alive
connections — which nginx and every SDK pool hold — open until
`graceful_timeout`, serving the old config on them. Here, once a worker is
told to stop, it accepts nothing more, answers what is in flight or arrives
within DRAIN_GRACE with `Connection: close`, and ends idle connections.
"""
from __future__ import annotations

import socket

import gevent
from gevent.monkey import get_original
from gevent.socket import wait_read
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

DRAIN_GRACE = 1.0   # seconds a kept-alive connection has, once a stop begins, to send its next request

_select = get_original("select", "select")


class _Stopping(Exception):
    """Thrown into a handler that is waiting for a next request when its worker stops."""


class _Server(PyWSGIServer):
    # Take one connection per wake-up, so the workers sharing the listening
    # socket split a burst of connections instead of one taking it all.
    max_accept = 1
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
            return super().read_requestline()
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

    def _sendall(self, data):
        """One send(2) when the kernel takes it all, as it nearly always does.

        gevent's sendall asks the socket for its buffer size (a system call) on
        every call: a tenth of a streamed chunk's cost in the gateway.
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

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        for server in _Server.live:
            server.begin_stop()
