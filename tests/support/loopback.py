"""Servers on an ephemeral loopback port for tests that need something to call: webhook receivers, origins."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.media import png

PNG = png()
CHUNK, CHUNKS = 64 * 1024, 20  # /chunked sends 1.25 MiB


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


@dataclass
class Origin:
    """A loopback HTTP server: records each request's path and Host header; `hang` holds /slow until set."""

    port: int
    seen: list[tuple[str, str]] = field(default_factory=list)
    hang: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(origin: Origin) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            origin.seen.append((self.path, self.headers.get("Host", "")))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client stopped reading (the cap)
                self._answer()

        def _answer(self) -> None:
            match self.path:
                case "/image.png":
                    self._send(200, PNG, {"Content-Type": "image/png"})
                case "/redirect":
                    self._send(302, b"", {"Location": "/image.png"})
                case "/declared":  # claims a gigabyte: refused before reading any of it
                    self._send(200, b"x" * 10, {"Content-Length": str(2**30)})
                case "/chunked":  # no length: only counting the chunks catches it
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for _ in range(CHUNKS):
                        self.wfile.write(f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                case "/slow":
                    origin.hang.wait(timeout=30)
                case _:
                    self._send(404, b"not here", {})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def origin_server() -> Iterator[Origin]:
    """The origin, served on loopback from a thread until the block ends."""
    with loopback_server() as server:
        org = Origin(port=server.server_address[1])
        server.RequestHandlerClass = _handler(org)
        try:
            yield org
        finally:
            org.hang.set()  # a handler left hanging lets the server stop
