"""Every accepted job ends, over HTTP on a real Serve app with a short queue: images that a client stops waiting
for, a request for more images than there is room for, and batches deleted while running or done."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ray import serve

from tests.support.app import app_args, deployed
from tests.support.jobs import ENDED, until

APP = "lifecycle"
LIMIT = 3
SLOW_IMAGE = {"prompt": "a slow apple", "num_inference_steps": 200}  # seconds each on a tiny twin


@pytest.fixture(scope="module")
def lifecycle(cluster_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with deployed(cluster_url, APP, app_args(tmp_path_factory.mktemp(APP), ["tiny-t2v"], max_queued_jobs=LIMIT)) as c:
        yield c


def image_jobs() -> list[Any]:
    jobs, _ = serve.get_deployment_handle("JobTracker", APP).list.remote("image", None, 100, "desc").result()
    return jobs


def active(client: httpx.Client) -> int:
    [entry] = client.get("/v1/queue").json()["data"]
    return entry["queued"] + entry["in_progress"]


def test_images_a_client_stops_waiting_for_are_cancelled(lifecycle: httpx.Client, cluster_url: str) -> None:
    """The design: nobody can read a synchronous response once its client has gone, so its jobs are cancelled."""
    before = {j.id for j in image_jobs()}
    url = httpx.URL(cluster_url)
    body = json.dumps({**SLOW_IMAGE, "n": 3}).encode()
    with socket.create_connection((url.host, url.port), timeout=60) as waiting:  # a client that waits for its images
        waiting.sendall(f"POST /{APP}/v1/images/generations HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        # it goes away once all three were admitted and the first has made a step, never finished (200 steps)
        until(lambda: len(jobs := [j for j in image_jobs() if j.id not in before]) == 3 and any(j.step for j in jobs),
              120, "three image jobs admitted, one of them running")
    jobs = [j for j in image_jobs() if j.id not in before]
    assert len(jobs) == 3, "all three were admitted"
    until(lambda: all(j.status.terminal for j in image_jobs() if j.id not in before), 120, "every image job to end")
    ended = {j.id: (j.status.value, j.step) for j in image_jobs() if j.id not in before}
    statuses = sorted(status for status, _ in ended.values())
    assert "cancelled" in statuses and set(statuses) <= {"completed", "cancelled"}, ended  # one may have made it
    assert sum(step for _, step in ended.values()) < 3 * 200, f"the work stopped: {ended}"
    assert active(lifecycle) == 0, "the model's queue count is back to 0"


def test_more_images_than_there_is_room_for_are_all_refused(lifecycle: httpx.Client) -> None:
    before = len(image_jobs())
    r = lifecycle.post("/v1/images/generations", json={"prompt": "too many", "n": LIMIT + 1})
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full", r.text
    assert len(image_jobs()) == before and active(lifecycle) == 0, "none of them was admitted, none runs"
    r = lifecycle.post("/v1/images/generations", json={"prompt": "room enough", "n": LIMIT, "seed": 1})
    assert r.status_code == 200 and len(r.json()["data"]) == LIMIT


def test_a_finished_batch_deletes_to_a_404(lifecycle: httpx.Client) -> None:
    batch = lifecycle.post("/v1/images/batches", json={"prompts": ["a", "b"]}).json()
    until(lambda: lifecycle.get(f"/v1/images/batches/{batch['id']}").json()["status"] in ENDED, 120, "the batch")
    r = lifecycle.delete(f"/v1/images/batches/{batch['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": batch["id"], "object": "image.batch.deleted", "deleted": True}
    assert lifecycle.get(f"/v1/images/batches/{batch['id']}").status_code == 404
    assert lifecycle.get(f"/v1/images/batches/{batch['id']}/content").status_code == 404


def test_a_running_batch_deletes_to_a_404_and_stops(lifecycle: httpx.Client) -> None:
    batch = lifecycle.post("/v1/images/batches", json={"prompts": ["a", "b", "c"], "num_inference_steps": 200})
    batch_id = batch.json()["id"]
    tracker = serve.get_deployment_handle("JobTracker", APP)
    until(lambda: tracker.get.remote(batch_id).result().step > 0, 60, "the batch to start")
    assert lifecycle.delete(f"/v1/images/batches/{batch_id}").json()["deleted"]
    assert lifecycle.get(f"/v1/images/batches/{batch_id}").status_code == 404
    # removed by its runner once it stopped
    until(lambda: tracker.get.remote(batch_id).result() is None, 60, "the deleted batch's record to be removed")
    assert active(lifecycle) == 0
