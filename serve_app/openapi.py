"""The OpenAPI document's parts FastAPI cannot infer: the bodies the Gateway reads by hand, the bearer scheme, and
turning the documentation routes off.

`POST /v1/videos` takes JSON or multipart (`serve_app/body.py`) and `POST /v1/sessions/{id}/uploads` a multipart
file, so neither handler declares a body parameter; without these the document has no request body for them, and
SDK generators and fuzzers never reach their validation.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serve_app.schemas import RouteRequest, VideoCreateRequest

REF = "#/components/schemas/{model}"
BINARY = {"type": "string", "format": "binary"}
_HAND_READ: tuple[type[BaseModel], ...] = (VideoCreateRequest, RouteRequest)


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in prop.get("anyOf", ()) if o != {"type": "null"}]
    if len(options) != 1:
        return prop
    return {**{k: v for k, v in prop.items() if k != "anyOf"}, **options[0]}


def _form_field(prop: dict[str, Any]) -> dict[str, Any]:
    """A form field: a list (`loras`) travels as JSON text, the rest as it is."""
    prop = _not_null(prop)
    if prop.get("type") == "array":
        return {"type": "string", "contentMediaType": "application/json", "description": prop.get("description", "")}
    return prop


def _multipart(model: type[BaseModel], files: tuple[str, ...]) -> dict[str, Any]:
    """`model`'s fields as a form, with `files` as file parts (a form has no null: an optional field is left out)."""
    schema = model.model_json_schema(ref_template=REF)
    properties = {name: BINARY if name in files else _form_field(prop) for name, prop in schema["properties"].items()}
    return {"type": "object", "properties": properties, "required": schema.get("required", [])}


def video_body(files: tuple[str, ...], model: type[BaseModel] = VideoCreateRequest) -> dict[str, Any]:
    """`openapi_extra` for a body read by hand (POST /v1/videos, /v1/route): a JSON object (media as data URLs,
    URLs or upload ids), or a form with the media as files."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=model.__name__)}},
        "multipart/form-data": {"schema": _multipart(model, files)},
    }}}


EVENTS: dict[int | str, dict[str, Any]] = {200: {
    "description": "`text/event-stream`: `<kind>.progress` events (data: JobProgress), then one final event with the "
                   "job (`<kind>.completed`, `.failed` or `.cancelled`); each event's id resumes with Last-Event-ID",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}, 204: {"description": "the job had ended "
                                                                                "before the event Last-Event-ID names"}}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"file": BINARY}, "required": ["file"]}}}}}


def install(api: FastAPI) -> None:
    """Add the hand-read bodies' schemas and the bearer scheme to the document FastAPI builds (once, cached)."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = build()
            components = document.setdefault("components", {})
            _, top = models_json_schema([(m, "validation") for m in _HAND_READ], ref_template=REF)
            for name, schema in top.get("$defs", {}).items():
                components.setdefault("schemas", {}).setdefault(name, schema)
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            document["security"] = [{"bearer": []}]
            document["paths"].get("/health", {}).get("get", {})["security"] = []
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def remove_docs(api: FastAPI) -> None:
    """Take /docs, /redoc and /openapi.json off `api` (they answer 404): FastAPI adds them at construction."""
    paths = {api.openapi_url, api.docs_url, api.redoc_url, api.swagger_ui_oauth2_redirect_url} - {None}
    api.router.routes[:] = [r for r in api.router.routes if getattr(r, "path", None) not in paths]
    api.openapi_url = api.docs_url = api.redoc_url = None
