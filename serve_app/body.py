"""Reading request bodies within their size limit: JSON or forms into fields and file bytes, and one upload."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from serve_app.errors import APIError, from_validation_error

M = TypeVar("M", bound=BaseModel)
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def _too_large(max_bytes: int, what: str = "request body") -> APIError:
    return APIError(413, f"the {what} is larger than {max_bytes // 2**20} MiB", code="payload_too_large")


def _check_length(request: Request, max_bytes: int) -> None:
    if int(request.headers.get("content-length") or 0) > max_bytes:
        raise _too_large(max_bytes)


async def read_body(request: Request, max_bytes: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """JSON or a form into (fields, file bytes). Form values are strings; files are bytes."""
    _check_length(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    raw: dict[str, bytes] = {}
    if content_type.startswith(FORMS):
        fields: dict[str, Any] = {}
        async with request.form(max_part_size=max_bytes) as form:
            for key, value in form.multi_items():
                if key == "input_reference[image_url]":  # the openai SDK's ImageInputReferenceParam
                    key = "input_reference"
                elif key == "input_reference[file_id]":
                    raise APIError(400, "file ids are not supported; upload the image or send a data URL",
                                   param="input_reference", code="unsupported_value")
                if isinstance(value, UploadFile):
                    raw[key] = await value.read()
                else:
                    fields[key] = value
    elif content_type.startswith("application/json"):
        try:
            fields = await request.json()
        except ValueError as exc:
            raise APIError(400, "the body is not valid JSON", code="invalid_json") from exc
        except RecursionError as exc:  # Python's parser recurses once per level of nesting
            raise APIError(400, "the body is nested too deeply", code="invalid_json") from exc
        if not isinstance(fields, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
    else:
        raise APIError(400, "send application/json, multipart/form-data or a url-encoded form",
                       code="unsupported_content_type")
    if sum(len(b) for b in raw.values()) > max_bytes:
        raise _too_large(max_bytes, "uploads")
    return fields, raw


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The file in multipart field `file`, and its name."""
    _check_length(request, max_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "send the file as multipart/form-data field `file`", code="unsupported_content_type")
    async with request.form(max_part_size=max_bytes) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise APIError(400, "send the file as multipart field `file`", param="file", code="missing_input")
        return await file.read(), file.filename or "file"


def validated(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
