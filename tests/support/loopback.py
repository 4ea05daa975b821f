"""Servers on an ephemeral loopback port for tests that need something to call: webhook receivers, origins."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the tests' output."""


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler] = QuietHandler) -> Iterator[ThreadingHTTPServer]:
    """`handler` served from a thread until the block ends; a handler that needs the port is set afterwards, as
    the server's `RequestHandlerClass`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
