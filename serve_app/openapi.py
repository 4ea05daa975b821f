"""The OpenAPI document's parts FastAPI cannot infer: the bodies the Gateway reads by hand, the errors every
operation can answer (OpenAI's shape, not FastAPI's 422), examples a reader of /docs can run as they are, and the
bearer scheme. A config without docs builds its app without /docs, /redoc and /openapi.json (`gateway.build_api`).

`POST /v1/videos` takes JSON or multipart (`serve_app/body.py`) and `POST /v1/sessions/{id}/uploads` a multipart
file, so neither handler declares a body parameter; without these the document has no request body for them, and
SDK generators and fuzzers never reach their validation.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serve_app.schemas import ErrorResponse, RouteRequest, VideoCreateRequest
from serve_app.service_schemas import JobProgress

REF = "#/components/schemas/{model}"
BINARY = {"type": "string", "format": "binary"}
_DOCUMENTED: tuple[type[BaseModel], ...] = (VideoCreateRequest, RouteRequest, ErrorResponse, JobProgress)
ERRORS = {"4XX": {
    "description": "refused: 400 a bad field (`param` names it), 401 no valid key, 404 no such record for this key, "
                   "409 not in a state for this, 413 too large, 422 unreadable media or media outside the limits, "
                   "429 the queue is full (see Retry-After)",
    "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}}
# Each runs as it is on the embedded default (tiny models) and on the real ones: "Try it out" in /docs makes a job.
EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "/v1/videos": {
        "text-to-video": {"summary": "text to video", "value": {
            "prompt": "A lighthouse on a cliff at dusk, waves breaking below, slow aerial shot", "seconds": 1,
            "seed": 42}},
        "fast": {"summary": "the fast preset of a job type, with a negative prompt", "value": {
            "prompt": "A red kite over a green hill, wind in the grass", "job_type": "video_fast",
            "negative_prompt": "blurry, low quality"}},
        "exact": {"summary": "frames, rate, steps and guidance set exactly", "value": {
            "prompt": "Macro shot of dew on a spider web at sunrise", "num_frames": 17, "fps": 16,
            "num_inference_steps": 10, "guidance_scale": 5.0, "seed": 7}},
    },
    "/v1/images/generations": {"image": {"summary": "one image, returned inline", "value": {
        "prompt": "A watercolor fox in a snowy forest", "n": 1, "response_format": "b64_json"}}},
    "/v1/images/batches": {"batch": {"summary": "three prompts as one job", "value": {
        "prompts": ["a red apple", "a green pear", "a yellow lemon"], "seed": 1}}},
    "/v1/route": {"route": {"summary": "ask in words; only say what would run", "value": {
        "query": "Make a short video of a cat playing in the garden", "prefer_quality": False}}},
}


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
    "description": "`<kind>.progress` events (data: JobProgress), then one final event with the "
                   "job (`<kind>.completed`, `.failed` or `.cancelled`); each event's id resumes with Last-Event-ID",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}, 204: {
    "description": "the job has ended and Last-Event-ID names its final event: nothing more will come"}}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"file": BINARY}, "required": ["file"]}}}}}


def _errors_and_examples(paths: dict[str, Any]) -> None:
    """Every operation answers errors in OpenAI's shape (a 400 where FastAPI would say 422); the create bodies
    get their examples."""
    for path, operations in paths.items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path != "/health":
                responses.update(ERRORS)
            content = operation.get("requestBody", {}).get("content", {})
            if path in EXAMPLES and "application/json" in content:
                content["application/json"]["examples"] = EXAMPLES[path]


def install(api: FastAPI) -> None:
    """Add the hand-read bodies' schemas, errors, examples and the bearer scheme to the document FastAPI builds
    (once, cached)."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = build()
            components = document.setdefault("components", {})
            _, top = models_json_schema([(m, "validation") for m in _DOCUMENTED], ref_template=REF)
            for name, schema in top.get("$defs", {}).items():
                components.setdefault("schemas", {}).setdefault(name, schema)
            for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, which this API never sends
                components["schemas"].pop(unused, None)
            _errors_and_examples(document["paths"])
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            document["security"] = [{"bearer": []}]
            document["paths"].get("/health", {}).get("get", {})["security"] = []
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
