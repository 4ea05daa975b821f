"""A job's end has one owner, the JobTracker, in-process with test doubles for the Notifier's and Uploader's handles.

`finish` records the end (the runner's and the orphan sweep's alike) and does what follows it once: the end webhook
from the delivery pool, and the removal of a job deleted while it ran. `remove` is the one removal of a job and its
files (a DELETE, a job deleted while it ran, retention). The flow runner, run against the real tracker here, makes
no webhook call and deletes no file of its own.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deployments import flow, jobs, sweep
from deployments.assets import AssetLinks, Encoded
from deployments.metrics import JobGauges
from deployments.plan import Submission
from deployments.retention import DAY_S, Reaper
from domain.records import Job, JobParams, JobStatus, Session
from domain.views import job_view
from pipelines.request import GenerationCancelled
from serve_app.config import AppConfig
from serve_app.router import Fields, Media, route
from tests.support.fakes import OWNER, FakeHandle, Stages
from tests.support.jobs import until

HOOK = "https://example.com/hook"
ASSET = Encoded("video", "video", "mp4", b"mp4", 64, 32, 5, 16)


class SyncHandle:
    """A test double for a DeploymentHandle called from the tracker's threads: `.method.remote(...).result()`."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> SimpleNamespace:
        method = getattr(self._target, name)
        return SimpleNamespace(remote=lambda *a, **kw: SimpleNamespace(result=lambda timeout_s=None: method(*a, **kw)))


class Receiver:
    """The Notifier: counts deliveries by job; `hold` keeps them on their way until released; `fail` raises on the
    first that many."""

    def __init__(self, hold: bool = False, fail: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.calls = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._fail = fail
        self._lock = threading.Lock()

    def notify(self, url: str, event: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            if self.calls <= self._fail:
                raise RuntimeError("the Notifier's replica went away")
        self.release.wait(10)
        with self._lock:
            self.events.append(event)
        return {"delivered": True, "attempts": 1, "status_code": 200, "error": None}

    def of(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["data"]["id"] == job_id]


class Uploader:
    """The Uploader's deletions: the bucket keys in `failing` cannot be deleted (returned to retry)."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.deleted: list[list[dict[str, Any]]] = []
        self.failing = failing

    def delete(self, records: list[dict[str, Any]]) -> list[str]:
        self.deleted.append(records)
        return [r["key"] for r in records if r.get("remote") and r["key"] in self.failing]

    def delete_remote(self, keys: list[str]) -> list[str]:
        return [k for k in keys if k in self.failing]

    def prune(self, prefix: str) -> None:
        pass


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A tracker on its own store, with a Notifier and an Uploader double; the sweep only runs when the test says."""
    monkeypatch.setattr(sweep, "alive", lambda actor: actor == OWNER)

    def build(receiver: Receiver | None = None, uploader: Uploader | None = None, days: float | None = None) -> Any:
        receiver, uploader = receiver or Receiver(), uploader or Uploader()
        tracker = jobs.JobTracker.func_or_class(str(tmp_path / "jobs.db"), SyncHandle(uploader), days,
                                                retention_sweep_s=3600, notifier=SyncHandle(receiver),
                                                sweep_interval_s=3600)
        return SimpleNamespace(tracker=tracker, receiver=receiver, uploader=uploader, store=tracker._store)

    return build


def job(job_id: str = "video_1", status: JobStatus = JobStatus.IN_PROGRESS, owner: str | None = OWNER,
        webhook_url: str | None = HOOK, session_id: str | None = None) -> Job:
    return Job(id=job_id, kind="video", model="tiny-t2v", task="t2v", prompt="p",
               params=JobParams(size="64x32", seed=0, num_inference_steps=4), plan={}, status=status, owner=owner,
               webhook_url=webhook_url, session_id=session_id)


def assets(job_id: str, remote: bool = False) -> list[dict[str, Any]]:
    return [{**ASSET.record(f"generations/{job_id}/video.mp4"), "remote": remote}]


def drained(tracker: Any) -> None:
    """Wait for every delivery on its way, as a shutdown does, and let the tracker go on."""
    if (pending := tracker._webhooks.drain()) is not None:
        asyncio.run(asyncio.wait_for(pending, 10))


# --- the end webhook: one path, once per job ------------------------------------------------------------------


def test_finish_sends_the_end_webhook_once_with_the_api_s_view_and_records_it(world: Any) -> None:
    w = world()
    w.tracker.create([job()], max_active=4)
    ended = w.tracker.finish("video_1", JobStatus.COMPLETED, assets=assets("video_1"))
    drained(w.tracker)
    [event] = w.receiver.of("video_1")
    assert event["id"] == "evt_video_1_completed" and event["type"] == "video.completed", "receivers dedupe on it"
    assert event["data"] == job_view(ended, AssetLinks(), "").model_dump(mode="json"), "the API's view"
    assert w.store.get("video_1").webhook["delivered"], "the delivery is recorded on the job"
    # A late second end (a runner's after the sweep's), and sweeps: nothing follows twice.
    assert w.tracker.finish("video_1", JobStatus.FAILED, error=("x", "y")).status is JobStatus.COMPLETED
    w.tracker._sweep.run()
    drained(w.tracker)
    assert len(w.receiver.of("video_1")) == 1


def test_a_runner_that_dies_after_the_end_loses_no_webhook_and_none_is_sent_twice(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's last act is `finish`; it dies while the delivery is on its way: the sweep leaves that alone."""
    w = world(Receiver(hold=True))
    w.tracker.create([job()], max_active=4)
    w.tracker.finish("video_1", JobStatus.COMPLETED, assets=assets("video_1"))
    monkeypatch.setattr(sweep, "alive", lambda actor: False)  # the runner is gone
    w.tracker._sweep.run()
    w.tracker._sweep.run()
    assert w.tracker._webhooks.on_the_way() == ["video_1"]
    w.receiver.release.set()
    drained(w.tracker)
    w.tracker._sweep.run()
    drained(w.tracker)
    assert len(w.receiver.of("video_1")) == 1 and w.receiver.calls == 1
    assert w.store.get("video_1").webhook["delivered"]


def test_a_delivery_that_raised_is_sent_again_by_the_next_sweep_only(world: Any) -> None:
    w = world(Receiver(fail=1))
    w.tracker.create([job()], max_active=4)
    w.tracker.finish("video_1", JobStatus.COMPLETED, assets=assets("video_1"))
    drained(w.tracker)
    assert w.receiver.of("video_1") == [] and w.store.get("video_1").webhook is None, "nothing recorded"
    w.tracker._sweep.run()
    drained(w.tracker)
    w.tracker._sweep.run()
    drained(w.tracker)
    assert len(w.receiver.of("video_1")) == 1 and w.receiver.calls == 2


def test_a_new_tracker_sends_the_webhook_its_predecessor_never_recorded(world: Any) -> None:
    """What a tracker that died between an end and its delivery's record leaves: the next one's start-up sweep."""
    w = world()
    w.store.create([job(status=JobStatus.COMPLETED)], max_active=4)  # ended, no delivery recorded
    after = world(w.receiver)
    drained(after.tracker)
    [event] = w.receiver.of("video_1")
    assert event["id"] == "evt_video_1_completed"


def test_the_sweep_fails_an_orphan_once_with_one_webhook_and_leaves_a_live_runner_s_jobs(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world()
    gone = "SERVE_REPLICA::wan#FlowRunner#gone"
    w.tracker.create([job("video_1", owner=gone), job("video_2", owner=gone), job("video_3")], max_active=4)
    w.tracker.cancel("video_2", delete=True)
    w.tracker._sweep.run()
    w.tracker._sweep.run()
    drained(w.tracker)
    orphan = w.store.get("video_1")
    assert (orphan.status, orphan.error_code) == (JobStatus.FAILED, "interrupted")
    assert [e["type"] for e in w.receiver.of("video_1")] == ["video.failed"]
    assert w.store.get("video_2") is None, "deleted while it ran: removed at its end"
    assert [e["type"] for e in w.receiver.of("video_2")] == ["video.failed"], "its webhook went before the record"
    assert w.store.get("video_3").status is JobStatus.IN_PROGRESS, "its runner lives: left to it"


def test_shutdown_stops_the_sweep_and_awaits_the_webhooks_on_their_way(world: Any) -> None:
    w = world(Receiver(hold=True))
    w.tracker.create([job()], max_active=4)
    w.tracker.finish("video_1", JobStatus.COMPLETED, assets=assets("video_1"))

    async def main() -> None:
        shutdown = asyncio.ensure_future(w.tracker.__del__())
        await asyncio.sleep(0.05)
        assert not shutdown.done(), "a delivery is on its way"
        w.receiver.release.set()
        await asyncio.wait_for(shutdown, 10)

    asyncio.run(main())
    assert len(w.receiver.of("video_1")) == 1 and w.tracker.__del__() is None
    w.store.create([job("video_2", owner="SERVE_REPLICA::wan#FlowRunner#gone")], max_active=4)
    w.tracker._sweep.run()
    assert w.store.get("video_2").status is JobStatus.IN_PROGRESS, "a closing tracker leaves the sweep to the next"


# --- one removal of a job and its files -------------------------------------------------------------------------


def test_remove_an_ended_job_deletes_its_files_defers_a_failed_bucket_delete_and_drops_the_record(world: Any) -> None:
    records = assets("video_1", remote=True)
    w = world(uploader=Uploader(failing=frozenset({records[0]["key"]})))
    w.tracker.create([job(webhook_url=None)], max_active=4)
    w.tracker.finish("video_1", JobStatus.COMPLETED, assets=records)
    w.tracker.remove("video_1")
    assert w.uploader.deleted == [records], "the Uploader deletes the files"
    assert list(w.store.pending_deletes()) == [[records[0]["key"]]], "kept for the retention sweep to retry"
    assert w.tracker.get("video_1") is None


def test_a_job_deleted_while_it_runs_is_removed_at_its_end_after_its_one_webhook(world: Any) -> None:
    w = world()
    w.tracker.create([job()], max_active=4)
    w.tracker.remove("video_1")  # a DELETE while it runs
    running = w.store.get("video_1")
    assert running.cancel_requested and running.delete_requested and w.uploader.deleted == [], "stopped, not gone"
    records = assets("video_1")
    w.tracker.finish("video_1", JobStatus.COMPLETED, assets=records)  # the cancel came after its last step
    assert w.store.get("video_1") is None and w.uploader.deleted == [records]
    drained(w.tracker)
    assert [e["type"] for e in w.receiver.of("video_1")] == ["video.completed"]


def test_a_delete_a_deleted_running_job_and_an_expiry_all_go_through_the_one_removal(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    removed: list[str] = []
    remove = Reaper.remove
    monkeypatch.setattr(Reaper, "remove", lambda self, job: (removed.append(job.id), remove(self, job))[1])
    w = world(days=1)
    w.tracker.create([job("video_ended"), job("video_running"), job("video_old")], max_active=4)
    w.tracker.finish("video_ended", JobStatus.COMPLETED, assets=assets("video_ended"))
    w.tracker.remove("video_ended")  # the Gateway's DELETE of an ended job
    w.tracker.remove("video_running")  # ... of a running one, which its end removes
    w.tracker.finish("video_running", JobStatus.CANCELLED, error=("cancelled", "cancelled by request"))
    w.tracker.finish("video_old", JobStatus.COMPLETED, assets=assets("video_old"))
    w.store.update("video_old", even_if_ended=True, completed_at=w.store.get("video_old").completed_at - 2 * DAY_S)
    assert w.tracker._reaper.sweep().jobs == 1  # retention
    assert removed == ["video_ended", "video_running", "video_running", "video_old"]
    assert all(w.tracker.get(j) is None for j in ("video_ended", "video_running", "video_old"))


def test_deleting_a_session_removes_its_jobs_through_the_one_removal(world: Any) -> None:
    w = world()
    w.tracker.create_session(Session(id="sess_x"))
    w.tracker.create([job("video_done", session_id="sess_x"), job("video_running", session_id="sess_x")],
                     max_active=4)
    w.tracker.finish("video_done", JobStatus.COMPLETED, assets=assets("video_done"))
    w.tracker.delete_session("sess_x")
    assert w.tracker.get("video_done") is None and w.store.get("video_running").delete_requested
    w.tracker.finish("video_running", JobStatus.CANCELLED, error=("cancelled", "cancelled by request"))
    assert w.tracker.get("video_running") is None, "its end removed it"


# --- gauges ------------------------------------------------------------------------------------------------------


def test_gauges_follow_the_store_and_go_back_to_zero() -> None:
    counts = {("tiny-t2v", "queued"): 2, ("tiny-t2v", "in_progress"): 1}
    levels: dict[tuple[str, str], float] = {}
    gauge = SimpleNamespace(set=lambda value, tags: levels.__setitem__((tags["model"], tags["status"]), value))
    gauges = JobGauges(gauge, lambda: dict(counts))
    gauges.refresh()
    assert levels == counts
    counts.clear()
    gauges.refresh()
    assert levels == {("tiny-t2v", "queued"): 0, ("tiny-t2v", "in_progress"): 0}


# --- the flow runner against the real tracker --------------------------------------------------------------------


class Generator:
    """Makes "frames" once released; stops at its next step once its job is asked to stop, as a generator does."""

    def __init__(self, tracker: Any) -> None:
        self.tracker, self.started, self.release = tracker, asyncio.Event(), asyncio.Event()

    async def generate(self, job_id: str, request: Any, segment: int = 0) -> str:
        self.started.set()
        while not self.release.is_set():
            if self.tracker.get(job_id).cancel_requested:
                raise GenerationCancelled("stopped")
            await asyncio.sleep(0.01)
        return "frames"


def submission(job_id: str) -> Submission:
    config = AppConfig.model_validate({"models": [{"name": "tiny-t2v"}]})
    routed = route(config, Fields(prompt="x", num_frames=5, webhook_url=HOOK), Media(), job_id)
    made = Job(id=job_id, kind="video", model="tiny-t2v", task=routed.plan.task, prompt="x", params=routed.params,
               plan=routed.plan.model_dump(), total_steps=routed.plan.total_steps, webhook_url=HOOK)
    return Submission(job=made, plan=routed.plan, inputs=routed.inputs)


def test_the_runner_hands_each_end_to_the_tracker_which_sends_one_webhook_per_job(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Completed, cancelled, and deleted while it ran: one webhook each, none from the runner; the deleted job's
    files and record go through the tracker's removal, none through the runner's stages."""
    context = SimpleNamespace(replica_id=SimpleNamespace(to_full_id_str=lambda: OWNER))
    monkeypatch.setattr(flow.serve, "get_replica_context", lambda: context)
    w = world()

    async def main() -> None:
        generator, stages = Generator(w.tracker), Stages()
        handles = {k: FakeHandle(stages) for k in ("encode", "upload", "notify")}
        runner = flow.FlowRunner.func_or_class({"tiny-t2v": FakeHandle(generator)}, handles, FakeHandle(w.tracker))

        async def settle(responses: list) -> None:
            await asyncio.gather(*responses, return_exceptions=True)

        runner._settle = settle
        await runner.submit([submission("video_done"), submission("video_cancelled"), submission("video_deleted")],
                            max_active=4)
        await generator.started.wait()
        w.tracker.cancel("video_cancelled")
        w.tracker.remove("video_deleted")
        await asyncio.sleep(0.05)
        generator.release.set()
        await asyncio.gather(*runner._tasks, return_exceptions=True)
        assert stages.notified == [] and stages.deleted_assets == [], "the runner sends and deletes nothing itself"

    asyncio.run(asyncio.wait_for(main(), 30))
    until(lambda: w.tracker._webhooks.on_the_way() == [], 10, "the deliveries")
    assert [e["type"] for e in w.receiver.of("video_done")] == ["video.completed"]
    assert [e["type"] for e in w.receiver.of("video_cancelled")] == ["video.cancelled"]
    assert [e["type"] for e in w.receiver.of("video_deleted")] == ["video.cancelled"]
    assert w.store.get("video_deleted") is None and w.store.get("video_done").webhook["delivered"]
    [event] = w.receiver.of("video_done")
    assert event["data"] == job_view(replace(w.store.get("video_done"), webhook=None), AssetLinks(), "").model_dump(
        mode="json"), "the event carries the same view as the API"
    [asset] = event["data"]["assets"]  # S2's metadata rides on the event as on the API's object
    assert {k: asset[k] for k in ("asset_index", "task", "negative_prompt_used", "denoise_strength")} == \
        {"asset_index": 0, "task": "t2v", "negative_prompt_used": True, "denoise_strength": None}
    assert event["data"]["enhancement_source"] == "none" and "processing_time" in event["data"]
