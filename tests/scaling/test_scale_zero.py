"""Scale to zero: a generator at `min_replicas: 0` holds no replica while idle; a job that arrives waits `queued` with
its queue position and stage `starting` (GET and SSE alike) while Serve starts a replica, then completes, and the
model scales back to zero. In-process: the words a model card and a waiting job show, routing to a model at zero,
and the events of a job that waits for its model."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import connect_sse
from pydantic import BaseModel
from starlette.responses import Response
from starlette.testclient import TestClient

from domain.records import Job, JobParams, JobStatus
from serve_app.cards import Generators, scaling_card
from serve_app.config import AppConfig, ModelConfig
from serve_app.events import Feeds, State, event_stream
from serve_app.query import answer_query, unavailable_models
from serve_app.router import Media
from serve_app.schemas import RouteRequest
from tests.media import probe
from tests.support.app import SCALING_APP, ZERO, ZERO_MODEL, replica_states
from tests.support.fakes import FakeTracker
from tests.support.jobs import ENDED, eventually, until

MODEL = ZERO_MODEL
FIRST_STEP_BOUND_S = 120  # a correctness bound (the replica does start), not a speed goal


# --- in-process -----------------------------------------------------------------------------------------------------

def test_a_model_card_says_a_model_at_zero_starts_on_the_first_job() -> None:
    zero = ModelConfig(name=MODEL, autoscaling_config=ZERO)
    assert scaling_card(zero, {}).model_dump() == {"min_replicas": 0, "max_replicas": 1, "scales_to_zero": True,
                                                   "running": 0, "summary": "0 running: starts on the first job"}
    assert scaling_card(zero, {"STARTING": 1}).summary == "0 running, 1 starting"
    fixed = scaling_card(ModelConfig(name=MODEL, num_replicas=2), {"RUNNING": 2})
    assert (fixed.min_replicas, fixed.scales_to_zero, fixed.summary) == (2, False, "2 running")


class FixedGenerators(Generators):
    """Generators whose replica states are given, not read from Serve."""

    def __init__(self, states: dict[str, dict[str, int]]) -> None:
        super().__init__(AppConfig(models=[{"name": MODEL}]))
        self._fixed = states

    async def states(self) -> dict[str, dict[str, int]]:
        return self._fixed


def _job(**fields: Any) -> Job:
    return Job(id="video_1", kind="video", model=MODEL, task="t2v", prompt="p",
               params=JobParams(size="64x32", seed=0, num_inference_steps=4), plan={}, total_steps=4,
               **fields)


@pytest.mark.parametrize(
    ("states", "job", "want"),
    [
        ({MODEL: {}}, _job(stage="generate"), "model tiny-t2v is starting (0 replicas running, none started yet)"),
        ({MODEL: {"STARTING": 1}}, _job(stage="generate"), "model tiny-t2v is starting (0 replicas running, "
                                                           "1 starting)"),
        ({MODEL: {"RUNNING": 1}}, _job(stage="generate"), None),  # queued behind another job: not starting
        ({MODEL: {}}, _job(stage="enhance"), None),  # not at its generator yet
        ({MODEL: {}}, _job(stage="generate", status=JobStatus.IN_PROGRESS), None),
        ({}, _job(stage="generate"), None),  # Serve does not know the deployment: say nothing
    ],
)
def test_a_queued_job_at_a_model_with_no_running_replica_is_starting(states: dict, job: Job, want: str | None) -> None:
    waiting = asyncio.run(FixedGenerators(states).waiting(job))
    assert waiting == want
    assert State(job, 1, waiting).stage == ("starting" if want else job.stage)


class Ended(BaseModel):
    id: str
    status: str


class EndingTracker:
    """A JobTracker handle whose watch answers with the job ended."""

    def __init__(self, job: Job) -> None:
        self.job, self.watch = job, self

    async def remote(self, job_id: str, version: int, position: int | None) -> tuple[Job, None]:
        return replace(self.job, status=JobStatus.COMPLETED, version=version + 1), None


STARTING = "model tiny-t2v is starting (0 replicas running, 1 starting)"


def test_events_show_the_starting_stage_as_get_does() -> None:
    queued = _job(stage="generate")
    generators = FixedGenerators({MODEL: {"STARTING": 1}})
    api = FastAPI()

    @api.get("/events")
    async def stream() -> Response:
        first = State(queued, 1, await generators.waiting(queued))  # as the gateway's GET makes it
        return event_stream(Feeds(EndingTracker(queued), generators.waiting), first, None,  # type: ignore[arg-type]
                            lambda j: Ended(id=j.id, status=j.status.value), keepalive_s=15)

    with TestClient(api) as client, connect_sse(client, "GET", "/events") as source:
        seen = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
    assert [e for e, _ in seen] == ["video.progress", "video.completed"]
    first = seen[0][1]
    assert (first["status"], first["stage"], first["stage_detail"], first["queue_position"]) == \
        ("queued", "starting", STARTING, 1)


def test_a_feed_recomputes_the_stage_on_each_change() -> None:
    """The watch's every answer is described afresh: once the job starts, its stage is the plan's again."""
    async def run() -> list[tuple[str | None, str | None]]:
        queued = _job(stage="generate")
        tracker, generators = FakeTracker(queued), FixedGenerators({MODEL: {"STARTING": 1}})
        seen: list[tuple[str | None, str | None]] = []

        async def listen() -> None:
            async for state in Feeds(tracker, generators.waiting).follow(  # type: ignore[arg-type]
                    State(queued, 1, await generators.waiting(queued)), None):
                seen.append((state.stage, state.waiting))

        async def seen_has(n: int) -> None:
            await eventually(lambda: len(seen) >= n, 10, f"{n} states seen", poll_s=0)

        listener = asyncio.create_task(listen())
        await seen_has(1)
        tracker.advance(status=JobStatus.IN_PROGRESS, step=1)
        await seen_has(2)
        tracker.advance(status=JobStatus.COMPLETED, stage=None)
        await asyncio.wait_for(listener, 10)
        return seen

    assert asyncio.run(run()) == [("starting", STARTING), ("generate", None), (None, None)]


def test_a_model_at_zero_is_routed_to_when_it_is_the_only_one_able() -> None:
    config = AppConfig.model_validate({"models": [{"name": MODEL, "autoscaling_config": ZERO},
                                                  {"name": "tiny-i2v"}]})
    unavailable = unavailable_models(config, {}, {MODEL: {}, "tiny-i2v": {"RUNNING": 1}})
    assert unavailable == {MODEL: "it has no running replica (it scales to zero: one would start for this job)"}
    _, answer, _ = answer_query(config, RouteRequest(query="a video of a kite"), Media(), "video_q", unavailable)
    assert (answer.model, answer.fallback) == (MODEL, None)  # tiny-i2v cannot do t2v: the job waits for a replica


# --- over HTTP, on the scaling app (conftest.py) ------------------------------------------------------------------

def model_card(client: httpx.Client) -> dict[str, Any]:
    return next(card for card in client.get("/v1/models").json()["data"] if card["id"] == MODEL)


def replicas() -> dict[str, int]:
    return replica_states(SCALING_APP, MODEL)


def test_a_job_at_zero_replicas_waits_starting_then_completes_and_the_model_scales_back(
        scaling: httpx.Client) -> None:
    assert not replicas().get("RUNNING"), "min_replicas 0 and no initial_replicas: no replica runs before a job"
    card = model_card(scaling)
    assert card["scaling"] == {
        "min_replicas": 0, "max_replicas": 1, "scales_to_zero": True, "running": 0,
        "summary": "0 running: starts on the first job"}

    submitted = time.monotonic()
    video = scaling.post("/v1/videos", json={"model": MODEL, "prompt": "cold start", "num_frames": 9,
                                             "num_inference_steps": 12}).json()
    url = f"/v1/videos/{video['id']}"
    seen: dict[str, float] = {}  # what was first seen, and when (seconds after the submission)
    starting: dict[str, Any] = {}  # the job as GET showed it while its model started, and its first SSE event

    def first_step() -> bool:
        now, elapsed = scaling.get(url).json(), time.monotonic() - submitted
        for state, n in replicas().items():
            if n and state in ("STARTING", "RUNNING"):
                seen.setdefault(state, elapsed)
        if not starting and now["status"] == "queued" and now["stage"] == "starting":
            with connect_sse(scaling, "GET", f"{url}/events") as source:
                starting.update(now, event=json.loads(next(source.iter_sse()).data))
        if now["status"] != "queued" or now["step"] > 0:
            seen.setdefault("first_step", elapsed)
        return "first_step" in seen

    try:
        until(first_step, FIRST_STEP_BOUND_S, "a first step after a submission at zero replicas")
        assert starting, "the job was never seen queued with the starting stage"
        assert starting["queue_position"] == 1 and starting["stage_detail"].startswith(f"model {MODEL} is starting")
        event = starting["event"]
        assert (event["status"], event["stage"], event["queue_position"]) == ("queued", "starting", 1), event
        assert event["stage_detail"].startswith(f"model {MODEL} is starting"), event
        running_at = seen.get("RUNNING", seen["first_step"])
        print(f"\ntime to first step from zero replicas: {seen['first_step']:.1f} s after the submission "
              f"(a replica STARTING after {seen.get('STARTING', float('nan')):.1f} s, RUNNING after "
              f"{running_at:.1f} s; first step {seen['first_step'] - running_at:.1f} s after RUNNING)")

        done = scaling.get(url).json()
        until(lambda: done.update(scaling.get(url).json()) or done["status"] in ENDED, 120, f"{video['id']} to end")
        assert done["status"] == "completed", done
        assert (done["stage_detail"], done["queue_position"]) == (None, None)
        frames, fps, _ = probe(scaling.get(f"{url}/content").content)
        assert frames.shape[0] == 9 and fps == 16
    finally:
        scaling.post(f"{url}/cancel")  # a 409 once it has ended; ends it on a failure

    down_s = until(lambda: not any(replicas().values()), 90, "the scale-down to zero")
    print(f"scaled back to zero {down_s:.1f} s after the job ended")
    card = model_card(scaling)
    assert card["scaling"]["running"] == 0 and card["scaling"]["summary"] == "0 running: starts on the first job"
