"""In-process test doubles of the deployments' handles (Ray Serve's DeploymentHandles): a fake handle that runs a
method in an asyncio task, the JobTracker's contract in memory, a generator and the stages after it."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from deployments.assets import Encoded
from deployments.plan import StageFailed
from domain.errors import QueueFull
from domain.records import Job, JobStatus
from pipelines.request import GenerationCancelled

OWNER = "SERVE_REPLICA::wan#FlowRunner#test"


class FakeHandle:
    """A fake DeploymentHandle over `target`: `.method.remote(...)` runs the method in a task of its own."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> SimpleNamespace:
        method = getattr(self._target, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return SimpleNamespace(remote=lambda *a, **kw: asyncio.ensure_future(call(*a, **kw)))


class Tracker:
    """The JobTracker's contract, in memory; records every finish."""

    def __init__(self, max_active: int = 10) -> None:
        self.jobs: dict[str, Job] = {}
        self.finished: list[tuple[str, JobStatus, tuple[str, str] | None]] = []
        self.stopping: dict[str, asyncio.Event] = {}
        self.max_active = max_active

    def create(self, jobs: list[Job], max_active: int, max_per_key: int | None = None,
               idempotency: Any = None) -> None:
        if len(self.jobs) + len(jobs) > max_active:
            raise QueueFull("full")
        self.jobs.update({j.id: j for j in jobs})

    def stage(self, job_id: str, kind: str) -> bool:
        return not self.jobs[job_id].cancel_requested

    async def cancelled(self, job_id: str) -> bool:
        """Answers once the job is asked to stop, woken by `cancel` or `finish` as the store's signal wakes it."""
        await self._stopping(job_id).wait()
        return True

    def _stopping(self, job_id: str) -> asyncio.Event:
        return self.stopping.setdefault(job_id, asyncio.Event())

    def finish(self, job_id: str, status: JobStatus, assets: list | None = None, error: tuple | None = None,
               upload: dict | None = None) -> Job:
        self.finished.append((job_id, status, error))
        self._stopping(job_id).set()
        job = self.jobs[job_id] = replace(self.jobs[job_id], status=status, assets=assets or [])
        return job

    def cancel(self, job_id: str, delete: bool = False) -> Job:
        job = self.jobs[job_id] = replace(self.jobs[job_id], cancel_requested=True, delete_requested=delete)
        self._stopping(job_id).set()
        return job

    def get(self, job_id: str) -> Job:
        return self.jobs[job_id]

    def annotate(self, job_id: str, **fields: Any) -> Job:
        return self.jobs[job_id]


class Generator:
    """Makes "frames" at once, or, with `hold`, only once released; stops when its job is cancelled, unless it is
    `past_its_last_step` (a cancel that came as it finished)."""

    def __init__(self, tracker: Tracker, hold: bool = False, fail: bool = False,
                 past_its_last_step: bool = False) -> None:
        self.tracker, self.fail, self.past_its_last_step = tracker, fail, past_its_last_step
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def generate(self, job_id: str, request: Any, segment: int = 0) -> str:
        self.started.set()
        while not self.release.is_set():
            if self.tracker.jobs[job_id].cancel_requested and not self.past_its_last_step:
                raise GenerationCancelled("stopped")
            await asyncio.sleep(0.01)
        if self.fail:
            raise StageFailed("generate", "out of memory")
        return "frames"


class Stages:
    def __init__(self) -> None:
        self.notified: list[dict] = []
        self.deleted_assets: list[list] = []
        self.encoded = 0

    async def encode(self, *clips: Any, outputs: list, audio: bytes | None = None) -> list[str]:
        self.encoded += 1
        return [await c for c in clips]

    async def upload(self, prefix: str, *encoded: Any) -> tuple[list[dict], None]:
        for e in encoded:
            await e
        return [Encoded("video", "video", "mp4", b"mp4", 64, 32, 5, 16).record(f"{prefix}video.mp4")], None

    async def notify(self, url: str, event: dict) -> dict:
        self.notified.append(event)
        return {"delivered": True}

    async def delete(self, assets: list) -> None:
        self.deleted_assets.append(assets)


class FakeTracker:
    """A test double for the JobTracker's handle: `watch` answers when the test changes the job, and counts calls."""

    def __init__(self, job: Job) -> None:
        self.job, self.calls, self.changed = job, 0, asyncio.Event()
        self.watch = self

    async def remote(self, job_id: str, version: int, position: int | None) -> tuple[Job, None]:
        self.calls += 1
        while self.job.version == version:
            self.changed.clear()
            await self.changed.wait()
        return self.job, None

    def advance(self, **fields: Any) -> None:
        self.job = replace(self.job, version=self.job.version + 1, **fields)
        self.changed.set()
