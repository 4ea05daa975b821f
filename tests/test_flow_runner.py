"""The FlowRunner's job lifecycle in-process, with fake handles (test doubles for Ray Serve's DeploymentHandles:
each `.remote()` call starts an asyncio task, which later stages may await as Ray resolves a response).

Every way out of a job ends it exactly once, in the runner: completed, a stage failing, a cancel, the runner's
own task cancelled, a caller that goes away, a replica shutting down.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from deployments import flow
from deployments.plan import Submission
from domain.errors import QueueFull
from domain.records import Job, JobStatus
from serve_app.config import AppConfig
from serve_app.router import Fields, Media, route
from tests.support.fakes import OWNER, FakeHandle, Generator, Stages, Tracker


def submission(job_id: str = "video_1", **fields: Any) -> Submission:
    config = AppConfig.model_validate({"models": [{"name": "tiny-t2v"}]})
    routed = route(config, Fields(prompt="x", num_frames=5, **fields), Media(), job_id)
    job = Job(id=job_id, kind="video", model="tiny-t2v", task=routed.plan.task, prompt="x", params=routed.params,
              plan=routed.plan.model_dump(), total_steps=routed.plan.total_steps, webhook_url=fields.get("webhook_url"))
    return Submission(job=job, plan=routed.plan, inputs=routed.inputs)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A runner wired to fakes; built inside the running loop, as Serve builds it inside the replica's."""
    context = SimpleNamespace(replica_id=SimpleNamespace(to_full_id_str=lambda: OWNER))
    monkeypatch.setattr(flow.serve, "get_replica_context", lambda: context)

    def build(hold: bool = False, fail: bool = False, past_its_last_step: bool = False) -> SimpleNamespace:
        tracker, stages = Tracker(), Stages()
        generator = Generator(tracker, hold, fail, past_its_last_step)
        handles = {k: FakeHandle(stages) for k in ("encode", "upload", "notify")}
        runner = flow.FlowRunner.func_or_class({"tiny-t2v": FakeHandle(generator)}, handles, FakeHandle(tracker))

        async def settle(responses: list) -> None:
            await asyncio.gather(*responses, return_exceptions=True)

        runner._settle = settle
        return SimpleNamespace(runner=runner, tracker=tracker, generator=generator, stages=stages)

    return build


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=30))


async def ended(runner: Any) -> None:
    await asyncio.gather(*runner._tasks, return_exceptions=True)


def test_a_job_is_created_with_its_owner_and_ends_completed_once(world: Any) -> None:
    async def main() -> None:
        w = world()
        [job] = await w.runner.submit([submission()], max_active=4)
        assert job.owner == OWNER and w.tracker.jobs[job.id].owner == OWNER, "created and claimed in one call"
        await ended(w.runner)
        assert w.tracker.finished == [("video_1", JobStatus.COMPLETED, None)]
        assert [a["key"] for a in w.tracker.jobs["video_1"].assets] == ["generations/video_1/video.mp4"]

    run(main())


def test_a_failing_stage_fails_the_job_naming_the_stage(world: Any) -> None:
    async def main() -> None:
        w = world(fail=True)
        await w.runner.submit([submission()], max_active=4)
        await ended(w.runner)
        assert w.tracker.finished == [("video_1", JobStatus.FAILED, ("generate_failed", "out of memory"))]

    run(main())


def test_a_cancelled_job_stops_and_ends_cancelled(world: Any) -> None:
    async def main() -> None:
        w = world(hold=True)
        await w.runner.submit([submission()], max_active=4)
        await w.generator.started.wait()
        w.tracker.cancel("video_1")
        await ended(w.runner)
        assert w.tracker.finished == [("video_1", JobStatus.CANCELLED, ("cancelled", "cancelled by request"))]

    run(main())


def test_a_cancel_after_the_generation_stops_the_job_before_its_next_stage(world: Any) -> None:
    """The cancel reaches the runner pushed (its one `cancelled` call per job), so the next stage boundary stops
    the job without asking the tracker."""
    async def main() -> None:
        w = world(hold=True, past_its_last_step=True)
        await w.runner.submit([submission()], max_active=4)
        await w.generator.started.wait()
        w.tracker.cancel("video_1")
        w.generator.release.set()
        await ended(w.runner)
        assert w.tracker.finished == [("video_1", JobStatus.CANCELLED, ("cancelled", "cancelled by request"))]
        assert w.stages.encoded == 0, "the clip was encoded after the cancel"

    run(main())


def test_cancelling_the_runner_s_task_still_ends_the_job(world: Any) -> None:
    async def main() -> None:
        w = world(hold=True)
        await w.runner.submit([submission()], max_active=4)
        await w.generator.started.wait()
        [task] = w.runner._tasks
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [(job_id, status, error)] = w.tracker.finished
        assert (job_id, status, error[0]) == ("video_1", JobStatus.CANCELLED, "cancelled")
        assert "generate" in error[1], "the message says where it stopped"

    run(main())


def test_a_waiting_caller_that_goes_away_cancels_its_jobs_which_still_end(world: Any) -> None:
    async def main() -> None:
        w = world(hold=True)
        work = [submission("img_1"), submission("img_2")]
        caller = asyncio.create_task(w.runner.submit(work, max_active=4, wait=True))
        await w.generator.started.wait()
        caller.cancel()  # as Serve does when the HTTP client disconnects
        with pytest.raises(asyncio.CancelledError):
            await caller
        await ended(w.runner)
        assert sorted(w.tracker.finished) == [("img_1", JobStatus.CANCELLED, ("cancelled", "cancelled by request")),
                                              ("img_2", JobStatus.CANCELLED, ("cancelled", "cancelled by request"))]

    run(main())


def test_a_waiting_caller_gets_the_ended_jobs(world: Any) -> None:
    async def main() -> None:
        w = world()
        jobs = await w.runner.submit([submission("img_1"), submission("img_2")], max_active=4, wait=True)
        assert [(j.id, j.status) for j in jobs] == [("img_1", JobStatus.COMPLETED), ("img_2", JobStatus.COMPLETED)]

    run(main())


def test_a_full_queue_admits_none_and_starts_nothing(world: Any) -> None:
    async def main() -> None:
        w = world()
        with pytest.raises(QueueFull):
            await w.runner.submit([submission("img_1"), submission("img_2")], max_active=1)
        assert not w.runner._tasks and not w.tracker.jobs

    run(main())


def test_shutdown_waits_for_the_jobs_the_replica_owns(world: Any) -> None:
    async def main() -> None:
        w = world(hold=True)
        await w.runner.submit([submission()], max_active=4)
        await w.generator.started.wait()
        shutdown = asyncio.ensure_future(w.runner.__del__())
        await asyncio.sleep(0.05)
        assert not shutdown.done(), "a draining replica keeps its running job"
        w.generator.release.set()
        await shutdown
        assert w.tracker.finished == [("video_1", JobStatus.COMPLETED, None)]
        assert w.runner.__del__() is None, "an idle runner has nothing to wait for"

    run(main())


def test_the_runner_ends_a_job_with_finish_alone_sending_no_webhook_and_deleting_no_file(world: Any) -> None:
    """What follows an end (the webhook, the removal of a job deleted while it ran) is the tracker's, in `finish`:
    the runner calls neither the Notifier nor the Uploader's delete (tests/test_job_end.py has the tracker's side)."""
    async def main() -> None:
        w = world(hold=True)
        await w.runner.submit([submission(webhook_url="https://example.com/hook")], max_active=4)
        await w.generator.started.wait()
        w.tracker.cancel("video_1", delete=True)
        await ended(w.runner)
        assert w.tracker.finished == [("video_1", JobStatus.CANCELLED, ("cancelled", "cancelled by request"))]
        assert w.stages.notified == [] and w.stages.deleted_assets == []

    run(main())
