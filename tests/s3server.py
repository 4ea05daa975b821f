"""moto's standalone S3 server in a subprocess on loopback: real HTTP, so boto3 runs exactly as against S3."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

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
