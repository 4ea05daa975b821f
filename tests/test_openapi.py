"""The OpenAPI document: valid OpenAPI 3.1, every error documented in the shape the API sends (never FastAPI's 422),
the event streams as text/event-stream, and examples that are valid bodies and, sent as /docs' "Try it out" sends
them, make jobs that complete on the shared app."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

from serve_app.gateway import Gateway, build_api
from serve_app.openapi import EXAMPLES
from serve_app.schemas import ImageBatchRequest, ImageGenerationRequest, RouteRequest, VideoCreateRequest
from tests.support.app import app_config
from tests.support.fakes import FakeHandle
from tests.support.jobs import until, wait_for

CONFIG = app_config()
NO_HANDLE = FakeHandle(None)  # the document calls no handler
DOCUMENT = build_api(CONFIG, CONFIG.auth.keys(), Gateway(CONFIG, NO_HANDLE, NO_HANDLE, NO_HANDLE)).openapi()
BODIES: dict[str, type[BaseModel]] = {
    "/v1/videos": VideoCreateRequest, "/v1/images/generations": ImageGenerationRequest,
    "/v1/images/batches": ImageBatchRequest, "/v1/route": RouteRequest}
EXAMPLE_CASES = [(path, name, example["value"]) for path, named in EXAMPLES.items() for name, example in named.items()]


def test_the_document_is_valid_openapi() -> None:
    validate(DOCUMENT)


def test_every_operation_documents_its_errors_as_sent() -> None:
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}: validation errors are 400s here"
            if path != "/health":
                assert responses["4XX"]["content"]["application/json"]["schema"] == error, (method, path)
    assert "HTTPValidationError" not in DOCUMENT["components"]["schemas"]
    assert DOCUMENT["security"] == [{"bearer": []}]


def test_event_streams_are_documented_as_such() -> None:
    for path in ("/v1/videos/{video_id}/events", "/v1/images/batches/{batch_id}/events"):
        get = DOCUMENT["paths"][path]["get"]
        assert list(get["responses"]["200"]["content"]) == ["text/event-stream"] and "204" in get["responses"]
        assert any(p["name"] == "last-event-id" and p["in"] == "header" for p in get["parameters"])
    assert "JobProgress" in DOCUMENT["components"]["schemas"]


@pytest.mark.parametrize(("path", "name", "example"), EXAMPLE_CASES, ids=[f"{p}:{n}" for p, n, _ in EXAMPLE_CASES])
def test_each_example_is_in_the_document_and_a_valid_body(path: str, name: str, example: dict[str, Any]) -> None:
    content = DOCUMENT["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    assert content["examples"][name]["value"] == example
    BODIES[path].model_validate(example)


@pytest.mark.parametrize(("path", "name", "example"), EXAMPLE_CASES, ids=[f"{p}:{n}" for p, n, _ in EXAMPLE_CASES])
def test_each_example_runs_as_docs_would_send_it(client: httpx.Client, path: str, name: str,
                                                 example: dict[str, Any]) -> None:
    r = client.post(path, json=example)
    assert r.status_code == 200, r.text
    body = r.json()
    if path == "/v1/videos":
        assert wait_for(client, body["id"], {"completed", "failed", "cancelled"})["status"] == "completed"
    elif path == "/v1/images/batches":
        def ended() -> bool:
            return client.get(f"/v1/images/batches/{body['id']}").json()["status"] not in ("queued", "in_progress")

        until(ended, 120, "the batch to end")
        assert client.get(f"/v1/images/batches/{body['id']}").json()["status"] == "completed"
    elif path == "/v1/images/generations":
        assert len(body["data"]) == example["n"] and body["data"][0]["b64_json"]
    else:
        assert body["video"] is None and body["model"], "a route answer, with no job made"


def test_docs_page_is_served(client: httpx.Client) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower() and client.get("/openapi.json").json()["paths"]
