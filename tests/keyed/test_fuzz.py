"""Zero 5xx: schemathesis fuzzes every operation in the service's own OpenAPI document over real HTTP, positive and
negative examples, and no answer may be a server error or carry internal detail. Also: the documentation routes
can be turned off, and errors (HTTP bodies and job errors) never carry paths, addresses, pids or tracebacks."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from ray import serve
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from starlette.testclient import TestClient

from deployments.flow import _reason
from deployments.plan import StageFailed, stage
from deployments.redact import scrub
from serve_app import errors
from serve_app.gateway import Gateway, build_api
from tests.support.app import FUZZ_KEY, KEYED_APP, app_config
from tests.support.fakes import FakeHandle
from tests.support.jobs import until

AUTH = {"Authorization": f"Bearer {FUZZ_KEY}"}
EXAMPLES = 50
REAL_CREATE_EVERY = 10  # one video create in ten really queues (capped at one active job); the rest are dry runs
TALLY: Counter[str] = Counter()  # requests per operation label, and "5xx"
STATUSES: Counter[int] = Counter()
# what no answer may carry: a traceback, Ray's process and actor details, an address of this machine
LEAKS = re.compile(r"Traceback|File \"|pid=|actor_id|ActorID|\b127\.0\.0\.1\b|ray\.exceptions|site-packages")


@pytest.fixture(scope="module")
def fuzz_url(keyed_url: str) -> Iterator[str]:
    """The keyed app (tests/keyed/conftest.py), where the fuzz's key may have one active job. What the fuzz left
    running stops when it is done, not after its generation."""
    yield keyed_url
    tracker = serve.get_deployment_handle("JobTracker", KEYED_APP)
    for kind in ("video", "image", "batch"):
        jobs, _ = tracker.list.remote(kind, None, 100, "desc", None).result()
        for job in jobs:
            tracker.cancel.remote(job.id).result()
    until(lambda: not tracker.queue.remote().result(), 120, "the fuzz's jobs to end")


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_url: str) -> Any:
    """The document the service itself serves: what SDK generators and clients see. Every request carries the key
    (tests/keyed/test_auth.py covers its absence), so the examples reach the handlers instead of a 401."""
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json", timeout=30)
    schema.config.generation.update(with_security_parameters=False)
    return schema


# The operations, known at collection from the same document built in-process; the test fuzzes the served one's.
# (schemathesis.pytest.from_fixture, the lazy loader, reads `node._nodeid`, which pytest 9 no longer has.)
CONFIG, NO_HANDLE = app_config(), FakeHandle(None)  # the document calls no handler
DOCUMENT = build_api(CONFIG, CONFIG.auth.keys(), Gateway(CONFIG, NO_HANDLE, NO_HANDLE, NO_HANDLE)).openapi()
OPERATIONS = [f"{method.upper()} {path}" for path, ops in DOCUMENT["paths"].items() for method in ops]


def _tame(case: Any) -> None:
    """Keep the load sane on 2 cores: most video creates are dry runs, and nothing the fuzz queues calls out to a
    random webhook host."""
    if case.method.upper() != "POST" or case.path not in ("/v1/videos", "/v1/images/batches"):
        return
    TALLY["creates"] += 1
    if case.path == "/v1/videos" and TALLY["creates"] % REAL_CREATE_EVERY:
        case.query = {**(case.query or {}), "dry_run": "true"}
    elif isinstance(case.body, dict):
        case.body.pop("webhook_url", None)


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_operation_answers_a_server_error(label: str, fuzz_schema: Any, fuzz_url: str, keyed_root: Path) -> None:
    """Positive and negative examples of `label`, each sent over HTTP with the key; none may be a 5xx, and no
    error may carry a traceback, a process or actor id, a local address or the storage path."""
    operation = fuzz_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served document"
    examples = st.one_of([operation.as_strategy(mode) for mode in GenerationMode])

    @given(case=examples)
    @settings(max_examples=EXAMPLES, phases=[Phase.explicit, Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        _tame(case)
        response = case.call(base_url=fuzz_url, headers=AUTH, timeout=120)
        TALLY[label] += 1
        TALLY["5xx"] += response.status_code >= 500
        STATUSES[response.status_code] += 1
        if response.status_code >= 400:
            assert not LEAKS.search(response.text) and str(keyed_root) not in response.text, response.text
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()


def test_fuzz_totals(fuzz_schema: Any) -> None:
    """Every operation was fuzzed, and none answered 5xx; the figures go to the log (issue 11's closing note)."""
    served = [r.ok().label for r in fuzz_schema.get_all_operations()]
    assert sorted(served) == sorted(OPERATIONS)
    requests = sum(TALLY[op] for op in served)
    print(f"\nfuzz: {len(served)} operations, {requests} requests, {TALLY['5xx']} 5xx; statuses "
          + ", ".join(f"{code}: {n}" for code, n in sorted(STATUSES.items())) + "; "
          + ", ".join(f"{op}: {TALLY[op]}" for op in served))
    assert all(TALLY[op] for op in served), "an operation was never called"
    assert TALLY["5xx"] == 0


def test_the_create_bodies_are_in_the_document(fuzz_schema: Any) -> None:
    """The bodies the gateway reads by hand are documented, JSON and multipart, so generators reach them."""
    paths = fuzz_schema.raw_schema["paths"]
    video = paths["/v1/videos"]["post"]["requestBody"]["content"]
    assert video["application/json"]["schema"] == {"$ref": "#/components/schemas/VideoCreateRequest"}
    form = video["multipart/form-data"]["schema"]["properties"]
    assert form["input_reference"] == form["video"] == {"type": "string", "format": "binary"}
    assert form["num_frames"]["type"] == "integer"
    assert "prompt" in fuzz_schema.raw_schema["components"]["schemas"]["VideoCreateRequest"]["properties"]
    upload = paths["/v1/sessions/{session_id}/uploads"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["file"]["format"] == "binary"


# --- no internal detail in errors ------------------------------------------------------------------------------


def test_an_unexpected_exception_is_a_bare_500_with_the_detail_only_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("cannot open /srv/wan/outputs/jobs.db (pid=4242, ip=10.0.3.7)")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"message": "internal error", "type": "server_error", "param": None,
                                         "code": "internal_error"}}
    assert "/srv/wan/outputs/jobs.db" in caplog.text, "the detail goes to the log"


RAY_TEXTS = {
    "ActorDiedError: The actor died (pid=4242, ip=10.0.3.7, actor_id=7b0a1c2d3e4f5a6b7c8d9e0f01000000, "
    "repr=<Generator>)": "ActorDiedError: The actor died",
    "RayTaskError(OSError): ray::ServeReplica:wan:Uploader.upload() (pid=77, ip=172.17.0.2)\n  File \"/app/x.py\", "
    "line 3\nOSError: disk full": "RayTaskError(OSError): ray::ServeReplica:wan:Uploader.upload()",
    "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/serve0/outputs/generations/video_1/video.mp4'":
        "FileNotFoundError: [Errno 2] No such file or directory: '<path>'",
    'EndpointConnectionError: Could not connect to the endpoint URL: "http://192.168.1.20:9000/bucket/k"':
        'EndpointConnectionError: Could not connect to the endpoint URL: "http://<address>/bucket/k"',
    "ConnectError: connect to [::1]:8265 failed": "ConnectError: connect to <address> failed",
    "ValueError: object 7b0a1c2d3e4f5a6b7c8d9e0f01000000 lost": "ValueError: object <id> lost",
}


@pytest.mark.parametrize("text", RAY_TEXTS)
def test_scrub_keeps_what_failed_and_drops_where(text: str) -> None:
    assert scrub(text) == RAY_TEXTS[text]


def test_scrub_leaves_a_plain_message_alone() -> None:
    for text in ("num_frames must be 4k+1 (got 6)", "size 832x480 at 16 fps, 12:30:45", "video_0123456789abcdef" * 2,
                 "https://example.com/hook answered 503", "ratio 16/9 and/or 4:3"):
        assert scrub(text) == text


def test_a_stage_s_failure_names_the_stage_not_the_file() -> None:
    @stage("upload")
    async def upload() -> None:
        raise FileNotFoundError(2, "No such file or directory", "/var/lib/wan/outputs/video_1/video.mp4")

    with pytest.raises(StageFailed) as failed:
        asyncio.run(upload())
    assert failed.value.stage == "upload"
    assert failed.value.message == "FileNotFoundError: [Errno 2] No such file or directory: '<path>'"


def test_the_runner_s_own_failure_reason_is_scrubbed() -> None:
    exc = RuntimeError("lost the object at 10.0.0.5:6379 (pid=99)\nTraceback (most recent call last):\n  ...")
    assert _reason(exc) == "RuntimeError: lost the object at <address>"
    assert _reason(RuntimeError()) == "RuntimeError"
