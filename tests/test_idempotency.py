"""Idempotency-Key on the create endpoints: a retry of the same request gets the same job and no second one is made;
the same key with another body is a 409. The store's side in-process (concurrent creates make one set of jobs),
then the HTTP side against the shared app."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from ray import serve

from deployments.jobstore import SQLiteJobStore
from domain.errors import KeyReused
from domain.records import Idempotency, Job, JobParams, JobStatus
from serve_app.idempotency import fingerprint
from serve_app.schemas import ImageBatchRequest
from tests.support.app import APP
from tests.support.jobs import ENDED, wait_for


def job(key_id: str | None = "key_a") -> Job:
    return Job(id=f"video_{uuid.uuid4().hex}", kind="video", model="tiny-t2v", task="t2v", prompt="p",
               params=JobParams(size="64x32", seed=0, num_inference_steps=4),
               plan={}, key_id=key_id)


def test_concurrent_creates_with_one_key_make_one_job(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    key = Idempotency("retry-1", "f" * 64)
    attempts = [[job()] for _ in range(16)]
    start = threading.Barrier(len(attempts))

    def create(jobs: list[Job]) -> list[Job] | str | None:
        start.wait()
        return store.create(jobs, max_active=100, idempotency=key)

    with ThreadPoolExecutor(len(attempts)) as pool:
        results = list(pool.map(create, attempts))
    assert results.count(None) == 1, "one request admitted its job"
    [winner] = [a[0].id for a, r in zip(attempts, results, strict=True) if r is None]
    assert all([j.id for j in r] == [winner] for r in results if r is not None), "the rest got that job back"
    assert [j.id for j in store.active()] == [winner], "and no other job exists"


def test_keys_are_per_caller_bound_to_the_body_and_live_as_long_as_the_job(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    key = Idempotency("k", "body-1")
    first = [job(), job()]  # an images call: n jobs under one key
    assert store.create(first, max_active=10, idempotency=key) is None
    assert [j.id for j in store.create([job(), job()], max_active=10, idempotency=key)] == [j.id for j in first]
    with pytest.raises(KeyReused):
        store.create([job()], max_active=10, idempotency=Idempotency("k", "body-2"))
    assert store.create([job("key_b")], max_active=10, idempotency=key) is None, "another caller's key is its own"
    assert store.create([job(None)], max_active=10, idempotency=key) is None, "and so is open mode's"
    # A retry is answered before admission: a full queue does not turn it into a 429.
    assert store.create([job()], max_active=0, idempotency=key) is not None
    for j in first:
        store.update(j.id, status=JobStatus.COMPLETED)
        store.delete(j.id)
    again = [job()]
    assert store.create(again, max_active=10, idempotency=Idempotency("k", "body-2")) is None, "the key went too"


def test_the_fingerprint_is_the_validated_body_and_the_files() -> None:
    a = ImageBatchRequest.model_validate({"prompts": ["x"], "seed": 1})
    reordered = ImageBatchRequest.model_validate({"seed": 1, "prompts": ["x"]})
    assert fingerprint("/v1/images/batches", a) == fingerprint("/v1/images/batches", reordered)
    assert fingerprint("/v1/images/batches", a) != fingerprint("/v1/videos", a), "the endpoint is part of it"
    other = ImageBatchRequest.model_validate({"prompts": ["x"], "seed": 2})
    assert fingerprint("/v1/images/batches", a) != fingerprint("/v1/images/batches", other)
    assert fingerprint("/p", a, {"image": b"1"}) != fingerprint("/p", a, {"image": b"2"})


# --- over HTTP --------------------------------------------------------------------------------------------


def listed(client: httpx.Client, prompt: str) -> list[str]:
    return [v["id"] for v in client.get("/v1/videos", params={"limit": 100}).json()["data"] if v["prompt"] == prompt]


def test_a_retried_video_create_gets_the_same_job(client: httpx.Client) -> None:
    prompt = f"idempotent {uuid.uuid4().hex}"
    body = {"prompt": prompt, "num_frames": 5, "model": "tiny-t2v"}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/v1/videos", json=body, headers=key)
    assert first.status_code == 200, first.text
    done = wait_for(client, first.json()["id"], ENDED)
    again = client.post("/v1/videos", json=dict(reversed(body.items())), headers=key)
    assert again.status_code == 200 and again.json()["id"] == done["id"]
    assert again.json()["status"] == "completed", "the job as it stands, not a new one"
    assert listed(client, prompt) == [done["id"]]

    other = client.post("/v1/videos", json={**body, "seed": 7}, headers=key)
    assert other.status_code == 409, other.text
    assert other.json()["error"] == {"message": other.json()["error"]["message"], "type": "conflict_error",
                                     "param": None, "code": "idempotency_key_reused"}
    too_long = client.post("/v1/videos", json=body, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "Idempotency-Key"
    fresh = client.post("/v1/videos", json=body)
    assert fresh.status_code == 200 and fresh.json()["id"] != done["id"], "no key: a new job, as before"
    wait_for(client, fresh.json()["id"], ENDED)


def test_concurrent_identical_creates_make_one_job(client: httpx.Client) -> None:
    prompt = f"at once {uuid.uuid4().hex}"
    key = {"Idempotency-Key": uuid.uuid4().hex}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/videos", headers=key, json={
            "prompt": prompt, "num_frames": 5, "model": "tiny-t2v"}), range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    assert len({a.json()["id"] for a in answers}) == 1
    wait_for(client, answers[0].json()["id"], ENDED)
    assert listed(client, prompt) == [answers[0].json()["id"]]


def test_batches_and_images_honour_the_key(client: httpx.Client) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    batch = client.post("/v1/images/batches", json={"prompts": ["a", "b"]}, headers=key).json()
    assert client.post("/v1/images/batches", json={"prompts": ["a", "b"]}, headers=key).json()["id"] == batch["id"]
    assert client.post("/v1/images/batches", json={"prompts": ["c"]}, headers=key).status_code == 409

    tracker = serve.get_deployment_handle("JobTracker", APP)
    before = {j.id for j in tracker.list.remote("image", None, 100, "desc").result()[0]}
    image_key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"prompt": "once", "n": 2, "response_format": "url"}
    first = client.post("/v1/images/generations", json=body, headers=image_key)
    again = client.post("/v1/images/generations", json=body, headers=image_key)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert [d["url"] for d in again.json()["data"]] == [d["url"] for d in first.json()["data"]]
    made = {j.id for j in tracker.list.remote("image", None, 100, "desc").result()[0]} - before
    assert len(made) == 2, "two images generated, once"


def test_the_openai_sdk_retries_with_a_key_it_is_given(serve_url: str) -> None:
    """openai-python makes a key per request for its retries but sends none itself: a caller passes one."""
    sdk = OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = sdk.videos.create(prompt="sdk", size="64x32", seconds="4", extra_body={"num_frames": 5},
                              extra_headers=key)
    again = sdk.videos.create(prompt="sdk", size="64x32", seconds="4", extra_body={"num_frames": 5},
                              extra_headers=key)
    assert again.id == first.id
