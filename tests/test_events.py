"""Progress as Server-Sent Events: the stream of a real job on the shared app (steps that move, the final event, the
end), resumption with Last-Event-ID, many listeners on one tracker watch, and the fan-out and keepalives in-process
with a fake tracker (the handler tested with a fake, as vLLM tests its server)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import httpx
from fastapi import FastAPI
from httpx_sse import aconnect_sse, connect_sse
from ray import serve
from starlette.responses import Response
from starlette.testclient import TestClient

from domain.records import Job, JobParams, JobStatus
from serve_app.events import Feeds, State, event_stream
from tests.support.app import APP
from tests.support.fakes import FakeTracker
from tests.support.jobs import eventually, until
from wan_client.client import Client

LISTENERS = 100


def events(client: httpx.Client, path: str, **headers: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every event of a stream until the server ends it: (event, id, data)."""
    with connect_sse(client, "GET", path, headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(e.event, e.id, json.loads(e.data)) for e in source.iter_sse()]


def test_a_videos_events_show_its_steps_then_the_video_then_end(client: httpx.Client) -> None:
    # steps are reported at most twice a second: seconds of them, so several reports land on any machine
    video = client.post("/v1/videos", json={"prompt": "sse", "size": "128x64", "num_frames": 9,
                                            "num_inference_steps": 200}).json()
    stream = events(client, f"/v1/videos/{video['id']}/events")
    *progress, (final, final_id, done) = stream
    assert final == "video.completed" and done["status"] == "completed" and done["id"] == video["id"]
    assert done["assets"] and done["progress"] == 100
    assert progress and {e for e, _, _ in progress} == {"video.progress"}
    steps = [d["step"] for _, _, d in progress]
    assert steps == sorted(steps) and len(set(steps)) >= 3, f"steps must move, one event each: {steps}"
    assert all(d["total_steps"] == 200 and d["status"] in ("queued", "in_progress") for _, _, d in progress)
    ids = [int(i) for _, i, _ in stream]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    # resumable: after the last event there is nothing more (204: an EventSource stops reconnecting) ...
    assert client.get(f"/v1/videos/{video['id']}/events", headers={"Last-Event-ID": final_id}).status_code == 204
    # ... and from an earlier one the stream picks up at the newest state, which here is the end
    assert [e for e, _, _ in events(client, f"/v1/videos/{video['id']}/events", **{"Last-Event-ID": str(ids[0])})] \
        == ["video.completed"]


def test_a_cancelled_videos_stream_ends_with_video_cancelled(client: httpx.Client) -> None:
    video = client.post("/v1/videos", json={"prompt": "stop", "num_frames": 81, "num_inference_steps": 200}).json()
    seen = []
    with connect_sse(client, "GET", f"/v1/videos/{video['id']}/events") as source:
        for event in source.iter_sse():
            seen.append(event.event)
            if event.event == "video.progress" and json.loads(event.data)["step"] >= 2 and "cancel" not in seen:
                seen.append("cancel")
                assert client.post(f"/v1/videos/{video['id']}/cancel").status_code == 200
    assert "cancel" in seen and seen[-1] == "video.cancelled" and seen.count("video.cancelled") == 1


def test_a_batchs_events_end_with_the_batch(client: httpx.Client) -> None:
    batch = client.post("/v1/images/batches", json={"prompts": ["a", "b"], "num_inference_steps": 4}).json()
    stream = events(client, f"/v1/images/batches/{batch['id']}/events")
    assert stream[-1][0] == "batch.completed" and len(stream[-1][2]["assets"]) >= 2
    assert all(e == "batch.progress" for e, _, _ in stream[:-1])


def test_a_hundred_listeners_cost_one_tracker_watch(serve_url: str) -> None:
    """Every listener of one job on one gateway replica shares one watch on the tracker: 100 listeners leave one
    call waiting on the tracker, and each listener sees the job end."""
    tracker = serve.get_deployment_handle("JobTracker", APP)
    with httpx.Client(base_url=serve_url, timeout=60) as client:
        # seconds of steps on any machine (60 at 64x32 ended before 100 listeners had connected): all of them listen to
        # a running job
        video = client.post("/v1/videos", json={"prompt": "crowd", "size": "160x96", "num_frames": 81,
                                                "num_inference_steps": 200}).json()
    connected = 0

    async def listen(client: httpx.AsyncClient) -> list[str]:
        nonlocal connected
        seen = []
        async with aconnect_sse(client, "GET", f"/v1/videos/{video['id']}/events") as source:
            async for event in source.aiter_sse():
                if not seen:
                    connected += 1
                seen.append(event.event)
        return seen

    async def crowd() -> tuple[list[list[str]], list[int], float]:
        limits = httpx.Limits(max_connections=LISTENERS + 10)
        async with httpx.AsyncClient(base_url=serve_url, timeout=120, limits=limits) as client:
            started = time.monotonic()
            listeners = [asyncio.create_task(listen(client)) for _ in range(LISTENERS)]
            await eventually(lambda: connected == LISTENERS, 120, f"{LISTENERS} listeners connected")
            watches = [await tracker.watchers.remote() for _ in range(20)]  # while all 100 listen
            seen = await asyncio.wait_for(asyncio.gather(*listeners), 240)  # the deadline only bounds a hang
            return seen, watches, time.monotonic() - started

    seen, watches, seconds = asyncio.run(crowd())
    # 0 for the moment between one answer and the next watch
    assert max(watches) == 1, f"{LISTENERS} listeners of one job held {watches} tracker watches"
    assert all(s[-1] == "video.completed" for s in seen)
    assert all(len(s) >= 3 for s in seen), "every listener saw progress, not just the end"
    print(f"{LISTENERS} SSE listeners on one job: at most {max(watches)} tracker watch, "
          f"{sum(map(len, seen))} events delivered in {seconds:.1f} s")
    until(lambda: tracker.watchers.remote().result() == 0, 30, "the watch to end with its listeners")


# --- in-process, with a fake tracker --------------------------------------------------------------------------------

def _job() -> Job:
    return Job(id="video_1", kind="video", model="m", task="t2v", prompt="p",
               params=JobParams(size="64x32", seed=0, num_inference_steps=4), plan={}, total_steps=5)


def test_listeners_share_one_watch_and_each_gets_every_change_they_can_see() -> None:
    async def run() -> tuple[list[list[int]], int, Feeds]:
        tracker = FakeTracker(_job())
        feeds = Feeds(tracker)  # type: ignore[arg-type]

        seen: list[list[int]] = [[] for _ in range(LISTENERS)]

        async def listen(mine: list[int]) -> None:
            async for state in feeds.follow(State(tracker.job, None), None):
                mine.append(state.job.step)

        async def everyone_has(n: int) -> None:  # each change reaches every listener before the next: fast clients
            await eventually(lambda: all(len(s) >= n for s in seen), 10, f"{n} changes at every listener", poll_s=0)

        listeners = [asyncio.create_task(listen(s)) for s in seen]
        await everyone_has(1)
        for step in range(1, 6):
            tracker.advance(step=step, status=JobStatus.IN_PROGRESS)
            await everyone_has(step + 1)
        tracker.advance(status=JobStatus.COMPLETED)
        await asyncio.wait_for(asyncio.gather(*listeners), 10)
        return seen, tracker.calls, feeds

    seen, calls, feeds = asyncio.run(run())
    assert all(s == [0, 1, 2, 3, 4, 5, 5] for s in seen), seen[0]
    assert calls == 6, f"one watch per change, not per listener: {calls} for {LISTENERS} listeners"
    assert not feeds._feeds, "the feed stops with its last listener"


def test_a_stream_sends_keepalives_while_nothing_changes() -> None:
    tracker = FakeTracker(_job())
    api = FastAPI()

    @api.get("/events")
    async def stream() -> Response:
        return event_stream(Feeds(tracker), State(tracker.job, 3), None, lambda j: j, keepalive_s=0.05)  # type: ignore

    with TestClient(api) as client, client.stream("GET", "/events") as r:
        lines = r.iter_lines()
        first = [next(lines) for _ in range(3)]
        assert first[0] == "id: 0" and first[1] == "event: video.progress"
        assert json.loads(first[2].removeprefix("data: "))["queue_position"] == 3
        assert any(line.startswith(": ping") for line in (next(lines) for _ in range(4))), "no keepalive comment"


def test_a_finished_jobs_last_event_id_gets_204() -> None:
    job = replace(_job(), status=JobStatus.COMPLETED, version=7)
    response = event_stream(Feeds(FakeTracker(job)), State(job, None), "7", lambda j: j, 15)  # type: ignore
    assert response.status_code == 204
    # a Last-Event-ID that is no version of ours is ignored, not an error
    assert event_stream(Feeds(FakeTracker(job)), State(job, None), "x", lambda j: j, 15).status_code == 200  # type: ignore


def test_the_clients_events_pass_over_keepalives() -> None:
    # The bytes the service sends for a job that waits: an event, a keepalive comment, the final event. httpx-sse
    # alone yields an empty third event for the comment (it keeps the last id), which the CLI would parse as JSON.
    body = (b'id: 1\r\nevent: video.progress\r\ndata: {"step": 1}\r\n\r\n: ping - 2026-12-04\r\n\r\n'
            b'id: 2\r\nevent: video.completed\r\ndata: {"status": "completed"}\r\n\r\n')
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body,
                                                             headers={"content-type": "text/event-stream"}))
    with Client("http://wan", transport=transport) as client:
        events = list(client.events("/v1/videos/video_1/events"))
    assert [(e.name, e.data) for e in events] == [("video.progress", {"step": 1}),
                                                   ("video.completed", {"status": "completed"})]
