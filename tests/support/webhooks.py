"""One webhook receiver for every test that is sent webhooks: a loopback HTTP server in the test's process that records
each delivery and answers as scripted (200 once the script runs out)."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.loopback import QuietHandler, loopback_server

HANG = 0  # a scripted status that makes the receiver hold the request without answering, until `release`


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


class WebhookReceiver:
    """What a webhook endpoint saw: `next` and `drain` take deliveries in arrival order; `events` keeps all, by job."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/hooks/wan"
        self.release = threading.Event()
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._replies: queue.Queue[tuple[int, dict[str, str]]] = queue.Queue()
        self._all: list[Received] = []
        self._lock = threading.Lock()

    def script(self, *replies: int | tuple[int, dict[str, str]]) -> None:
        """How the next deliveries are answered: a status, or a status and headers (`HANG`: no answer)."""
        for reply in replies:
            self._replies.put(reply if isinstance(reply, tuple) else (reply, {}))

    def next(self, timeout_s: float = 30) -> Received:
        """The next delivery not yet taken, waiting up to `timeout_s` for it."""
        try:
            return self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no webhook reached {self.url} within {timeout_s} s") from None

    def drain(self) -> list[Received]:
        """Every delivery not yet taken (call it once the sender is done: nothing is waited for)."""
        out = []
        while not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    @property
    def events(self) -> dict[str, list[dict[str, Any]]]:
        """Every event received so far, by the id of the job it is about, in arrival order."""
        with self._lock:
            received = list(self._all)
        by_job: dict[str, list[dict[str, Any]]] = {}
        for got in received:
            by_job.setdefault(got.event["data"]["id"], []).append(got.event)
        return by_job

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got = Received({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                with receiver._lock:
                    receiver._all.append(got)
                receiver._inbox.put(got)
                try:
                    status, headers = receiver._replies.get_nowait()
                except queue.Empty:
                    status, headers = 200, {}
                if status == HANG:
                    receiver.release.wait(timeout=30)
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


@contextlib.contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A receiver served from a thread until the block ends."""
    with loopback_server() as server:
        receiver = WebhookReceiver(server.server_address[1])
        server.RequestHandlerClass = receiver.handler()
        try:
            yield receiver
        finally:
            receiver.release.set()  # a handler left waiting lets the server stop
