"""Errors in OpenAI's shape, built in one place: {"error": {"message", "type", "param", "code"}}.

The domain raises its own errors (`domain/errors.py`: `InvalidRequest` from the router and the generator, `QueueFull`
and `KeyReused` from the job store's admission); `as_api_error` maps each to its HTTP status here and `install`
answers them, so neither the handlers nor any module below them knows a domain error's status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from domain.errors import InvalidRequest, KeyReused, QueueFull
from serve_app.schemas import ErrorDetail, ErrorResponse

log = logging.getLogger("ray.serve")
RETRY_AFTER_S = 30  # what a 429 asks a client to wait: about one short generation
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 409: "conflict_error",
          413: "invalid_request_error", 416: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error"}
MAX_ECHO = 40  # characters of a refused value that its error repeats: the message stays short for a long one


class APIError(Exception):
    """An error the HTTP layer itself finds (an unknown id, a body too large, content not ready)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_response(error: APIError) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=error.message, type=_TYPES.get(error.status, "server_error"),
                                           param=error.param, code=error.code))
    return JSONResponse(body.model_dump(), status_code=error.status, headers=error.headers)


def from_validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """The first pydantic error as a 400 naming its field (FastAPI's location, body, query or path, dropped: a body
    field may be called `query`); a value outside a fixed set (a Literal or an enum) is named with the values taken,
    as OpenAI's errors do, so a client sees its mistake."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    if isinstance(exc, RequestValidationError) and loc[:1] in (["body"], ["query"], ["path"]):
        loc = loc[1:]
    param = ".".join(loc) or None
    what = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("literal_error", "enum"):
        what = f"{_echo(err.get('input'))} is not one of {err['ctx']['expected']}"
    message = f"{param}: {what}" if param else what
    return APIError(400, message, param=param, code="invalid_value" if param else "invalid_request")


def _echo(value: Any) -> str:
    """A refused value as its error repeats it: quoted as the values taken are, cut short past MAX_ECHO."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    cut = text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "..."
    return repr(cut) if isinstance(value, str) else cut


def as_api_error(exc: Exception) -> APIError:
    """Every error a handler can meet, as the one HTTP error it means."""
    match exc:
        case APIError():
            return exc
        case InvalidRequest():
            return APIError(400, exc.message, param=exc.param, code=exc.code)
        case QueueFull():
            return APIError(429, exc.message, code="queue_full",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
        case KeyReused():
            return APIError(409, exc.message, code="idempotency_key_reused")
        case ValidationError() | RequestValidationError():
            return from_validation_error(exc)
    raise TypeError(f"no HTTP mapping for {type(exc).__name__}") from exc


def install(app: FastAPI) -> None:
    """Answer every domain error in OpenAI's shape, and anything else as a bare 500."""
    handler: Callable[[Request, Exception], Awaitable[JSONResponse]] = _handle
    for error_type in (APIError, InvalidRequest, QueueFull, KeyReused, RequestValidationError):
        app.add_exception_handler(error_type, handler)
    app.add_exception_handler(Exception, _unexpected)


async def _handle(_: Request, exc: Exception) -> JSONResponse:
    return error_response(as_api_error(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: the client learns only that it happened; the traceback, with whatever addresses, paths or actor ids
    it names, goes to the replica's log."""
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(APIError(500, "internal error", code="internal_error"))
