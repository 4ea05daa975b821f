"""A small HTTP client of wan-serve for the CLI: bearer auth, errors in OpenAI's shape as exceptions, progress
events that survive a dropped connection (resumed with Last-Event-ID), and downloads streamed to a file.

It imports neither torch nor Ray: the CLI starts in a fraction of a second on any machine.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError, connect_sse

RECONNECTS = 5  # dropped event streams resumed in a row before giving up


class ServiceError(Exception):
    """The service refused (a 4xx or 5xx, with its error object) or could not be reached (`status` None)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.param = message, status, code, param


@dataclass(frozen=True)
class Event:
    name: str  # video.progress, video.completed, batch.failed, ...
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return not self.name.endswith(".progress")


def dispatched(source: EventSource) -> Iterator[ServerSentEvent]:
    """The events of an SSE stream that carry data, the only ones the spec dispatches: once an event had an id,
    httpx-sse also yields an empty one for each keepalive comment (florimondmanca/httpx-sse#35), and the service
    sends a keepalive every `events_keepalive_s`."""
    return (sse for sse in source.iter_sse() if sse.data)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise ServiceError(f"HTTP {response.status_code}: {response.text[:200]}", response.status_code) from None
    raise ServiceError(error.get("message", ""), response.status_code, error.get("code"), error.get("param"))


def media_file(field: str, path: Path) -> tuple[str, tuple[str, bytes, str]]:
    """A multipart file part for `field`, its type guessed from the file's name."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return field, (path.name, path.read_bytes(), kind)


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s,
                                  transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of one request; ServiceError for a refusal or no answer."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError(f"cannot reach {self._http.base_url}: {exc}") from None
        _raise_for(response)
        return response.json()

    def create_video(self, fields: dict[str, Any], files: list[tuple[str, tuple[str, bytes, str]]]) -> dict:
        """POST /v1/videos: JSON without files, multipart with them (lists travel as JSON text)."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if not files:
            return self.call("POST", "/v1/videos", json=fields)
        form = {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in fields.items()}
        return self.call("POST", "/v1/videos", data=form, files=files)

    def events(self, path: str) -> Iterator[Event]:
        """A job's events up to and including its final one; a dropped stream is resumed where it stopped."""
        last_id, drops = None, 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(self._http, "GET", path, headers=headers, timeout=None) as source:
                    if source.response.status_code == 204:
                        return  # its final event was the last one seen
                    _raise_for(source.response)
                    for sse in dispatched(source):
                        last_id, drops = sse.id or last_id, 0
                        event = Event(sse.event, json.loads(sse.data))
                        yield event
                        if event.final:
                            return
            except (httpx.TransportError, SSEError) as exc:
                drops += 1
                if drops > RECONNECTS:
                    raise ServiceError(f"the event stream of {path} kept dropping: {exc}") from None
                continue
            raise ServiceError(f"the event stream of {path} ended before the job did")

    def download(self, path: str, to: Path, params: dict[str, str] | None = None) -> int:
        """Stream a file to `to`; its size in bytes."""
        try:
            with self._http.stream("GET", path, params=params) as response:
                _raise_for(response)
                with to.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise ServiceError(f"cannot reach {self._http.base_url}: {exc}") from None
        return to.stat().st_size
