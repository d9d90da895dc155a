"""The gunicorn worker: gevent's pywsgi handler, fair accepts, prompt graceful stops.

gunicorn's `gevent_pywsgi` worker answers with one write per response (the
plain `gevent` worker uses two), but as shipped it lets one worker accept a
whole burst of connections, and it keeps idle keep-alive connections — which
nginx and every SDK pool hold — open until `graceful_timeout` on stop or
reload. Here idle connections close as soon as the worker is told to stop,
while requests in flight finish.
"""
from __future__ import annotations

import socket

from gevent.monkey import get_original
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

_select = get_original("select", "select")


def _has_data(sock) -> bool:
    readable, _, _ = _select([sock], [], [], 0)
    return bool(readable)


class _Server(PyWSGIServer):
    # Take one connection per wake-up, so the workers sharing the listening
    # socket split a burst of connections instead of one taking it all.
    max_accept = 1
    live: list["_Server"] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stopping = False
        self.idle_sockets: set = set()
        _Server.live.append(self)

    def close_idle(self) -> None:
        """End keep-alive connections waiting for a next request that has not come."""
        self.stopping = True
        for sock in list(self.idle_sockets):
            try:
                if not _has_data(sock):
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(PyWSGIHandler):
    def read_requestline(self):
        server = self.server
        if server.stopping and not _has_data(self.socket):
            return ""  # the worker is stopping: end this keep-alive connection
        server.idle_sockets.add(self.socket)
        try:
            return super().read_requestline()
        finally:
            server.idle_sockets.discard(self.socket)


class GatewayWorker(GeventPyWSGIWorker):
    server_class = _Server
    wsgi_handler = _Handler

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        for server in _Server.live:
            server.close_idle()
