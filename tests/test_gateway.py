"""The Gateway's handlers without Ray: an app from `build_api`, as each ingress gets one, over a Gateway whose tracker,
flow runner and uploader are test doubles of their handles (`.method.remote(...)`, awaited, as Serve's handles are).
The router runs for real, in-process; every create goes the one way in (`serve_app/intake.py`)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deployments.assets import Encoded
from deployments.plan import Submission
from domain.errors import KeyReused, QueueFull
from domain.records import Job, JobKind, JobParams, JobStatus
from serve_app import intake
from serve_app.auth import digest
from serve_app.config import AppConfig
from serve_app.errors import RETRY_AFTER_S
from serve_app.gateway import Gateway, build_api
from tests.support.app import KEY_A, KEY_B, app_config
from tests.support.fakes import FakeHandle

PNG = b"\x89PNG fake image"
CREATES = [  # each create endpoint with a body that routes on the tiny models
    ("/v1/videos", {"prompt": "a red kite", "num_frames": 5, "seed": 7}),
    ("/v1/images/generations", {"prompt": "a red kite", "n": 2, "seed": 7}),
    ("/v1/images/batches", {"prompts": ["a red kite", "a green pear"], "seed": 7}),
]


class FakeJobTracker:
    """A test double of the JobTracker's handle target: the jobs it is given, and no sessions."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def get_session(self, session_id: str) -> None:
        return None


class FakeFlow:
    """A test double of the FlowRunner: records each submit and admits its jobs as they are, or raises `refuse`;
    with `wait`, ends them completed with one PNG each, as the runner answers a waiting submit."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.submits: list[dict[str, Any]] = []
        self.refuse = refuse

    def submit(self, work: list[Submission], limit: int, max_per_key: int | None, wait: bool = False,
               key: Any = None) -> list[Job]:
        self.submits.append(dict(work=work, limit=limit, wait=wait, key=key))
        if self.refuse is not None:
            raise self.refuse
        png = Encoded("image", "image", "png", PNG, 64, 64, 1)
        return [replace(s.job, status=JobStatus.COMPLETED, assets=[png.record(f"generations/{s.job.id}/image.png")])
                if wait else s.job for s in work]


class FakeUploader:
    """A test double of the Uploader: every file is the same PNG."""

    def get(self, key: str) -> bytes:
        return PNG


class Service:
    """An app over fakes, and the fakes, as one test drives them."""

    def __init__(self, config: AppConfig, flow: FakeFlow | None = None) -> None:
        self.tracker, self.flow = FakeJobTracker(), flow or FakeFlow()
        gateway = Gateway(config, FakeHandle(self.tracker), FakeHandle(self.flow), FakeHandle(FakeUploader()))
        self.client = TestClient(build_api(config, config.auth.keys(), gateway), raise_server_exceptions=False)


@pytest.fixture
def service() -> Iterator[Service]:
    yield Service(app_config(["tiny-t2v"]))


def _error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def test_a_video_create_reaches_the_flow_with_a_video_id_and_typed_params(service: Service) -> None:
    r = service.client.post("/v1/videos", json={"prompt": "a red kite", "num_frames": 5, "seed": 7})
    assert r.status_code == 200, r.text
    [submit] = service.flow.submits
    [work] = submit["work"]
    job = work.job
    assert JobKind.VIDEO.owns(job.id) and job.kind == JobKind.VIDEO and len(job.id) == len("video_") + 32
    assert isinstance(job.params, JobParams) and (job.params.seed, job.params.num_frames) == (7, 5)
    assert (job.prompt, job.model, submit["limit"], submit["wait"]) == ("a red kite", "tiny-t2v", 64, False)
    assert r.json()["id"] == job.id and r.json()["status"] == "queued" and "openai-poll-after-ms" in r.headers


def test_a_dry_run_routes_and_submits_nothing(service: Service) -> None:
    r = service.client.post("/v1/videos", params={"dry_run": "true"}, json={"prompt": "a red kite", "seed": 7})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "video.plan" and r.json()["seed"] == 7 and r.json()["model"] == "tiny-t2v"
    assert service.flow.submits == []


def test_images_are_admitted_together_with_consecutive_seeds_and_come_back_inline(service: Service) -> None:
    r = service.client.post("/v1/images/generations", json={"prompt": "a red kite", "n": 2, "seed": 7})
    assert r.status_code == 200, r.text
    [submit] = service.flow.submits
    assert submit["wait"] and [w.job.params.seed for w in submit["work"]] == [7, 8]
    assert all(JobKind.IMAGE.owns(w.job.id) and w.job.kind == JobKind.IMAGE for w in submit["work"])
    assert [base64.b64decode(d["b64_json"]) for d in r.json()["data"]] == [PNG, PNG]


def test_a_batch_is_one_job_with_a_batch_id_and_every_prompt(service: Service) -> None:
    r = service.client.post("/v1/images/batches", json={"prompts": ["a red kite", "a green pear"], "seed": 7})
    assert r.status_code == 200, r.text
    [work] = service.flow.submits[0]["work"]
    assert JobKind.BATCH.owns(work.job.id) and work.job.params.prompts == ["a red kite", "a green pear"]
    assert r.json()["id"] == work.job.id and r.json()["object"] == "image.batch"


@pytest.mark.parametrize(("path", "body"), CREATES)
def test_a_reused_idempotency_key_is_a_409_in_openai_s_shape(path: str, body: dict[str, Any]) -> None:
    service = Service(app_config(["tiny-t2v"]), FakeFlow(refuse=KeyReused("key k was used with another body")))
    r = service.client.post(path, json=body, headers={"Idempotency-Key": "k"})
    assert r.status_code == 409, r.text
    assert _error(r) == {"message": "key k was used with another body", "type": "conflict_error", "param": None,
                         "code": "idempotency_key_reused"}
    assert service.flow.submits[0]["key"].key == "k"  # the key went to the runner, with its body's fingerprint


@pytest.mark.parametrize(("path", "body"), CREATES)
def test_a_full_queue_is_a_429_with_retry_after(path: str, body: dict[str, Any]) -> None:
    service = Service(app_config(["tiny-t2v"]), FakeFlow(refuse=QueueFull("tiny-t2v has 16 jobs waiting")))
    r = service.client.post(path, json=body)
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == str(RETRY_AFTER_S)
    assert _error(r)["type"] == "rate_limit_error" and _error(r)["code"] == "queue_full"


@pytest.mark.parametrize(("path", "body"), CREATES)
def test_routing_runs_off_the_event_loop(path: str, body: dict[str, Any], service: Service,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The router fits and checks arrays: on the event loop it would stall every other request of the replica."""
    on_loop: list[bool] = []

    def watched(route: Any) -> Any:
        def run(*args: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:
                on_loop.append(False)
            return route(*args)
        return run

    monkeypatch.setattr(intake, "route", watched(intake.route))
    monkeypatch.setattr(intake, "route_batch", watched(intake.route_batch))
    assert service.client.post(path, json=body).status_code == 200
    assert on_loop and not any(on_loop)


def test_another_key_s_job_is_a_404() -> None:
    service = Service(app_config(["tiny-t2v"], auth={"api_keys": [KEY_A, KEY_B]}))
    params = JobParams(size="64x64", seed=7, num_inference_steps=2)
    job = Job(id=JobKind.VIDEO.new_id(), kind=JobKind.VIDEO, model="tiny-t2v", task="t2v", prompt="a red kite",
              plan={}, params=params, status=JobStatus.IN_PROGRESS, key_id=digest(KEY_A)[:16])
    service.tracker.jobs[job.id] = job
    mine = service.client.get(f"/v1/videos/{job.id}", headers={"Authorization": f"Bearer {KEY_A}"})
    theirs = service.client.get(f"/v1/videos/{job.id}", headers={"Authorization": f"Bearer {KEY_B}"})
    assert mine.status_code == 200 and mine.json()["id"] == job.id, mine.text
    assert theirs.status_code == 404 and _error(theirs)["param"] == "video_id" and _error(theirs)["code"] == "not_found"
    batch_route = service.client.get(f"/v1/images/batches/{job.id}", headers={"Authorization": f"Bearer {KEY_A}"})
    assert batch_route.status_code == 404  # a video's id is no batch's


def test_each_app_is_its_own_keys_docs_and_studio() -> None:
    """Two ingresses in one process share nothing: each app has the keys, docs and studio its config gives it."""
    keyed = Service(app_config(["tiny-t2v"], auth={"api_keys": [KEY_A]}, api_docs=False, studio=False)).client
    open_ = Service(app_config(["tiny-t2v"])).client
    assert keyed.get("/v1/videos/video_0").status_code == 401 and open_.get("/v1/videos/video_0").status_code == 404
    off = ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/", "/studio/", "/studio/studio.js")
    assert {p: keyed.get(p).status_code for p in off} == dict.fromkeys(off, 404)
    assert open_.get("/openapi.json").json()["paths"]["/v1/videos"]["post"]["requestBody"]
    assert {p: open_.get(p).status_code for p in off[1:4] + off[5:]} == dict.fromkeys(off[1:4] + off[5:], 200)
    assert open_.get("/", follow_redirects=False).status_code == 307
    assert keyed.get("/v1/videos/video_0", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 404, "the API"
