"""Reading request bodies within their limits: JSON or forms into fields and file bytes, and one upload.

`BodyLimit` bounds every body before any handler sees it, FastAPI's own body parsing included: bytes are counted
as they stream in (chunked bodies too) and the request stops with a 413 past `max_body_mb`, so nothing past the cap
is ever buffered; a JSON body is scanned for its nesting depth before anything parses it.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.config import LimitsConfig
from serve_app.errors import APIError, error_response, from_validation_error

M = TypeVar("M", bound=BaseModel)
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
_STRINGS = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S)  # JSON strings, whose brackets do not nest
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_NESTING = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 opens, -1 (as int8) closes
_SCAN = 2**20
DEFAULT_LIMITS = LimitsConfig()


def too_large(max_bytes: int, what: str = "request body", param: str | None = None) -> APIError:
    """A 413 that also closes the connection, so the client stops sending what is left of its body (HTTP/1.1
    servers otherwise read the rest, to keep the connection)."""
    return APIError(413, f"the {what} is larger than {max_bytes / 2**20:g} MiB", param=param,
                    code="payload_too_large", headers={"Connection": "close"})


def json_too_deep(body: bytes, max_depth: int) -> bool:
    """Whether a JSON text nests arrays and objects deeper than `max_depth`, in C-speed passes over the bytes:
    strings removed, every byte but a bracket dropped, then a running sum of the levels, a MiB at a time."""
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    if len(brackets) <= max_depth:
        return False
    levels = np.frombuffer(brackets.translate(_NESTING), dtype=np.int8)
    depth = 0
    for start in range(0, len(levels), _SCAN):
        running = np.cumsum(levels[start:start + _SCAN], dtype=np.int64) + depth
        if running.max() > max_depth:
            return True
        depth = int(running[-1])
    return False


class BodyLimit:
    """ASGI middleware: every request body within `limits.max_body_mb` as it arrives, whatever reads it (a 413),
    and a JSON body within `limits.max_json_depth` (a 400). The limits are the app's `state.limits`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits: LimitsConfig = getattr(scope["app"].state, "limits", DEFAULT_LIMITS)  # the Gateway sets its own
        max_bytes = limits.max_body_mb * 2**20
        headers = {k.lower(): v for k, v in scope["headers"] if k.lower() in (b"content-length", b"content-type")}
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > max_bytes:  # refused before a byte of it is read
            await error_response(too_large(max_bytes))(scope, receive, send)
            return
        seen, refused, started, replaced = 0, False, False, False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    refused = True
                    raise too_large(max_bytes)
            return message

        async def answer(message: Message) -> None:
            """Whatever the app made of the error it met reading (FastAPI turns it into a 400), the answer is 413."""
            nonlocal started, replaced
            if message["type"] == "http.response.start" and not started:
                if refused:
                    replaced = True
                    await error_response(too_large(max_bytes))(scope, receive, send)
                started = True
            if not replaced:
                await send(message)

        if headers.get(b"content-type", b"").startswith(b"application/json"):
            try:
                body = await _read_all(counted)
            except APIError as exc:
                await error_response(exc)(scope, receive, send)
                return
            if json_too_deep(body, limits.max_json_depth):
                await error_response(APIError(400, f"the body nests deeper than {limits.max_json_depth} levels",
                                              code="invalid_json"))(scope, receive, send)
                return
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            await self.app(scope, counted, answer)
        except Exception:
            if not refused or started:
                raise
            await error_response(too_large(max_bytes))(scope, receive, send)


async def _read_all(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise APIError(400, "the client went away before the body ended", code="incomplete_body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body again, as one message; after it, the client's own messages (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def read_body(request: Request, limits: LimitsConfig) -> tuple[dict[str, Any], dict[str, bytes]]:
    """JSON or a form into (fields, file bytes). Form values are strings; files are bytes, each within
    `max_file_mb` (the body as a whole is `BodyLimit`'s)."""
    content_type = request.headers.get("content-type", "")
    raw: dict[str, bytes] = {}
    if content_type.startswith(FORMS):
        fields: dict[str, Any] = {}
        for key, value in await _form_items(request, limits):
            if key == "input_reference[image_url]":  # the openai SDK's ImageInputReferenceParam
                key = "input_reference"
            elif key == "input_reference[file_id]":
                raise APIError(400, "file ids are not supported; upload the image or send a data URL",
                               param="input_reference", code="unsupported_value")
            if isinstance(value, bytes):
                raw[key] = value
            else:
                fields[key] = value
    elif content_type.startswith("application/json"):
        try:
            fields = await request.json()
        except ValueError as exc:
            raise APIError(400, "the body is not valid JSON", code="invalid_json") from exc
        except RecursionError as exc:  # deeper than Python's parser goes, with max_json_depth set above it
            raise APIError(400, "the body is nested too deeply", code="invalid_json") from exc
        if not isinstance(fields, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
    else:
        raise APIError(400, "send application/json, multipart/form-data or a url-encoded form",
                       code="unsupported_content_type")
    return fields, raw


async def read_upload(request: Request, limits: LimitsConfig) -> tuple[bytes, str]:
    """The file in multipart field `file` (within `max_file_mb`), and its name."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "send the file as multipart/form-data field `file`", code="unsupported_content_type")
    async with request.form(max_files=limits.max_form_fields, max_fields=limits.max_form_fields) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise APIError(400, "send the file as multipart field `file`", param="file", code="missing_input")
        return await _file_bytes(file, "file", limits.max_file_mb * 2**20), file.filename or "file"


async def _form_items(request: Request, limits: LimitsConfig) -> list[tuple[str, str | bytes]]:
    """A form's fields and files, at most `max_form_fields` of them, no part over `max_file_mb`: a text field is
    stopped by the parser at the cap, a file is spooled (to disk past 1 MiB) and measured."""
    max_part = limits.max_file_mb * 2**20
    try:
        async with request.form(max_files=limits.max_form_fields, max_fields=limits.max_form_fields,
                                max_part_size=max_part) as form:
            items = form.multi_items()
            if len(items) > limits.max_form_fields:
                raise APIError(400, f"at most {limits.max_form_fields} form fields and files", code="too_many_fields")
            return [(k, await _file_bytes(v, k, max_part) if isinstance(v, UploadFile) else v) for k, v in items]
    except HTTPException as exc:  # starlette's refusals of a form: too many parts, a part too large
        if "maximum size" in exc.detail:
            raise too_large(max_part, "form field") from exc
        raise APIError(400, f"the form is refused: {exc.detail}", code="invalid_form") from exc


async def _file_bytes(file: UploadFile, param: str, max_bytes: int) -> bytes:
    if file.size is not None and file.size > max_bytes:
        raise too_large(max_bytes, f"file in {param}", param)
    return await file.read()


def validated(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
