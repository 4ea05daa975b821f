"""Server-Sent Events of a job's progress: `GET /v1/videos/{id}/events` and `/v1/images/batches/{id}/events`.

Pushed, not polled: each gateway replica runs one watch on the job tracker per job that has listeners, however
many listen (`Feeds`), and the tracker answers a watch only when the job changes. A listener always gets the
newest state: one that falls behind skips states, never queues them. The event id is the job's version, so a
client that reconnects with `Last-Event-ID` gets only what changed since.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from domain.records import Job
from serve_app.service_schemas import JobProgress

log = logging.getLogger("ray.serve")
RETRY_S = 1.0  # a failed watch (the tracker restarting) is tried again after this
STARTING = "starting"  # the stage a queued job shows while its model has no running replica
Waiting = Callable[[Job | None], Awaitable[str | None]]  # why a queued job waits, in words (cards.py:Generators)


async def _not_waiting(job: Job | None) -> str | None:
    return None


@dataclass(frozen=True)
class State:
    job: Job | None  # None: the job is gone (deleted)
    position: int | None  # its place in its model's queue while queued
    waiting: str | None = None  # set while its model is starting: "model m is starting (...)"

    @property
    def key(self) -> tuple[int, int | None, str | None] | None:
        return None if self.job is None else (self.job.version, self.position, self.waiting)

    @property
    def stage(self) -> str | None:
        """The job's stage as clients see it: `starting` while it waits for its model's first replica."""
        return STARTING if self.waiting else self.job.stage if self.job else None


class _Feed:
    """One job's newest state on this replica, kept by one watch on the tracker, for every listener of the job."""

    def __init__(self, tracker: DeploymentHandle, first: State, waiting: Waiting) -> None:
        self.state = first
        self._waiting = waiting
        self.listeners = 0
        self._changed = asyncio.Condition()
        self.task = asyncio.create_task(self._watch(tracker))

    async def _watch(self, tracker: DeploymentHandle) -> None:
        while (job := self.state.job) is not None and not job.status.terminal:
            try:
                now, position = await tracker.watch.remote(job.id, job.version, self.state.position)
                found = State(now, position, await self._waiting(now))
            except Exception:
                log.exception("watching %s", job.id, extra={"job_id": job.id})
                await asyncio.sleep(RETRY_S)
                continue
            if found.key != self.state.key:
                async with self._changed:
                    self.state = found
                    self._changed.notify_all()

    async def after(self, seen: tuple[int, int | None] | None) -> State:
        """The newest state once it is not `seen`."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.state.key != seen or self.state.job is None)
            return self.state


class Feeds:
    """The jobs this replica's listeners follow: a feed starts with its first listener and stops with its last."""

    def __init__(self, tracker: DeploymentHandle, waiting: Waiting = _not_waiting) -> None:
        self._tracker = tracker
        self._waiting = waiting
        self._feeds: dict[str, _Feed] = {}

    async def follow(self, first: State, since: int | None) -> AsyncIterator[State]:
        """Each new state of `first.job` (those after version `since`, if given) up to and including its end."""
        assert first.job is not None
        job_id = first.job.id
        if (feed := self._feeds.get(job_id)) is None:
            feed = self._feeds[job_id] = _Feed(self._tracker, first, self._waiting)
        feed.listeners += 1
        seen = first.key if since is not None and since >= first.job.version else None
        try:
            while True:
                state = await feed.after(seen)
                yield state
                if state.job is None or state.job.status.terminal:
                    return
                seen = state.key
        finally:
            feed.listeners -= 1
            if not feed.listeners:
                feed.task.cancel()
                self._feeds.pop(job_id, None)


def _progress(state: State) -> str:
    job = state.job
    assert job is not None
    return JobProgress(id=job.id, status=job.status.value, progress=job.progress, step=job.step,
                       total_steps=job.total_steps, stage=state.stage, stage_detail=state.waiting,
                       queue_position=state.position).model_dump_json()


def event_stream(feeds: Feeds, first: State, last_event_id: str | None, view: Callable[[Job], BaseModel],
                 keepalive_s: float) -> Response:
    """`first.job`'s events as an SSE response: `<kind>.progress` for each change, then `<kind>.<status>`
    carrying the job's wire object, then the end; a keepalive comment every `keepalive_s` in between.

    A client that already has the final event (its Last-Event-ID is the ended job's version) gets a 204, which
    tells an EventSource to stop reconnecting.
    """
    job = first.job
    assert job is not None
    since = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    if job.status.terminal and since is not None and since >= job.version:
        return Response(status_code=204)

    async def events() -> AsyncIterator[ServerSentEvent]:
        async for state in feeds.follow(first, since):
            if (now := state.job) is None:  # deleted while followed: nothing more will come
                return
            if now.status.terminal:
                yield ServerSentEvent(json.dumps(view(now).model_dump()), id=str(now.version),
                                      event=f"{now.kind}.{now.status.value}")
            else:
                yield ServerSentEvent(_progress(state), id=str(now.version), event=f"{now.kind}.progress")

    return EventSourceResponse(events(), ping=keepalive_s, headers={"Cache-Control": "no-store"})

