"""moto's standalone S3 server in a subprocess on loopback: real HTTP, so boto3 runs exactly as against S3.

Also a loopback proxy to put in front of it that throttles the first requests for one object, as S3 does under load.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO
from urllib.parse import urlsplit

import httpx

# moto accepts any credentials; set these in the environment of whatever talks to the server.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(start_timeout_s: float = 30, port: int | None = None) -> Iterator[str]:
    """Start the server, wait until it answers (bounded), yield its endpoint URL, then stop it."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # A file, not a pipe: the server logs every request, and an unread pipe would fill and stall it.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(proc, endpoint, log, start_timeout_s)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class MotoServer:
    """moto's server on one loopback port, which a test can stop and start again there: S3 going away and coming
    back (empty: moto keeps its buckets in memory)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._running = ExitStack()

    def start(self) -> None:
        self._running.enter_context(s3_server(port=self.port))

    def stop(self) -> None:
        self._running.close()


def _wait_until_up(proc: subprocess.Popen[bytes], endpoint: str, log: IO[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read().decode(errors='replace')}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"moto server at {endpoint} did not answer within {timeout_s} s")
        time.sleep(0.1)


# S3's own answer when a prefix gets more requests than it can take; botocore counts SlowDown as throttling.
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message><RequestId>flaky-proxy</RequestId></Error>")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it: when it arrived (time.monotonic()), what it was, and the status it got."""

    at: float
    method: str
    path: str
    status: int


class FlakyProxy:
    """A loopback HTTP proxy to `upstream` that answers 503 SlowDown to the first `failures` requests for `path`.

    Everything else, and that path afterwards, is forwarded. Every request is recorded in `seen`, so a test can
    count the attempts a client made and time the gaps between them. With `retry_after_ms` the 503s also carry
    `x-amz-retry-after`, the server's own hint of how long to wait.
    """

    def __init__(self, upstream: str, path: str, failures: int, retry_after_ms: int | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.path = path
        self.failures = failures
        self.retry_after_ms = retry_after_ms
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_ProxyHandler,), {"proxy": self}))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FlakyProxy:
        threading.Thread(target=self._server.serve_forever, name="flaky-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def attempts(self, path: str | None = None) -> list[Seen]:
        """The requests for `path` (the throttled one by default), in the order they arrived."""
        with self._lock:
            return [s for s in self.seen if s.path == (path or self.path)]

    def throttle(self, arrived: float, method: str, path: str) -> bool:
        """Whether this request is one of the first `failures` for the path; recorded as 503 if so."""
        with self._lock:
            if path == self.path and sum(s.path == path for s in self.seen) < self.failures:
                self.seen.append(Seen(arrived, method, path, 503))
                return True
            return False

    def forward(self, arrived: float, method: str, target: str, headers: list[tuple[str, str]],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send the request on upstream as it came (Host included: it is signed), and record the status."""
        conn = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=30)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            payload = response.read()  # empty for HEAD
        finally:
            conn.close()
        with self._lock:
            self.seen.append(Seen(arrived, method, urlsplit(target).path, response.status))
        return response.status, {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}, payload


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered as a client expects
    proxy: FlakyProxy

    def _handle(self) -> None:
        arrived = time.monotonic()
        body = self._read_body()
        path = urlsplit(self.path).path
        if self.proxy.throttle(arrived, self.command, path):
            extra = {"x-amz-retry-after": str(self.proxy.retry_after_ms)} if self.proxy.retry_after_ms else {}
            self._reply(503, {"Content-Type": "application/xml", **extra}, SLOW_DOWN)
        else:
            self._reply(*self.proxy.forward(arrived, self.command, self.path, list(self.headers.items()), body))

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        while self.rfile.readline().strip():  # trailers, up to the blank line
            pass
        return b"".join(chunks)

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length" or self.command == "HEAD":
                self.send_header(name, value)
        if self.command != "HEAD":  # a HEAD answer keeps the object's length and has no body
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # the tests read `seen`, not stderr
        pass
