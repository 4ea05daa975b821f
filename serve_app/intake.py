"""One way in for every create: POST /v1/videos, /v1/images/generations, /v1/images/batches, and /v1/route with
`create`. In order: the Idempotency-Key, the webhook URL, the session, the media, routing (in a worker thread, never
on the event loop), the submission to the FlowRunner, and the wire view of each job admitted.

The endpoints differ only in their `Routing`: which router function makes their jobs from the request's fields and
media. Job ids are minted here, by `JobKind.new_id`, and nowhere else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from fastapi import Request
from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle

from deployments.assets import AssetLinks
from domain.records import Job, JobKind, Session, Upload
from domain.views import job_view
from domain.wire import ImageBatch, Video
from serve_app.auth import caller_of
from serve_app.cards import generator_deployments, replica_states
from serve_app.config import AppConfig
from serve_app.errors import APIError
from serve_app.fields import Fields, Media, Routed
from serve_app.idempotency import idempotency
from serve_app.media import MediaResolver, check_webhook
from serve_app.query import answer_query, enhancer_reading, unavailable_models
from serve_app.router import route, route_batch
from serve_app.schemas import RouteAnswer, RouteRequest

if TYPE_CHECKING:  # the enhancer's module loads torch, which the gateway never imports
    from pipelines.enhance import Reading


class RoutedJob(NamedTuple):
    id: str
    routed: Routed
    fields: Fields  # what it was routed with: its prompt, session and webhook go on the record


@dataclass(frozen=True)
class Planned:
    """A create's routing: its jobs (none where a query asks for none), and POST /v1/route's answer in words."""

    jobs: list[RoutedJob]
    answer: RouteAnswer | None = None


class Routing:
    """How one endpoint routes its creates: `prepare` gathers what routing needs from other deployments, once the
    request's checks have passed; `plan` runs in a worker thread, since the router decodes, fits and checks arrays."""

    kind: ClassVar[JobKind] = JobKind.VIDEO

    async def prepare(self) -> None:
        """Nothing, but for POST /v1/route."""

    def plan(self, media: Media) -> Planned:
        raise NotImplementedError


@dataclass
class OneVideo(Routing):
    """POST /v1/videos: one video job."""

    config: AppConfig
    fields: Fields

    def plan(self, media: Media) -> Planned:
        job_id = self.kind.new_id()
        return Planned([RoutedJob(job_id, route(self.config, self.fields, media, job_id), self.fields)])


@dataclass
class Images(Routing):
    """POST /v1/images/generations: `n` one-frame jobs, each with the seed after the one before."""

    kind: ClassVar[JobKind] = JobKind.IMAGE
    config: AppConfig
    fields: Fields
    n: int

    def plan(self, media: Media) -> Planned:
        jobs, fields = [], self.fields
        for _ in range(self.n):
            job_id = self.kind.new_id()
            routed = route(self.config, fields, media, job_id)
            jobs.append(RoutedJob(job_id, routed, fields))
            fields = replace(fields, seed=routed.params.seed + 1)
        return Planned(jobs)


@dataclass
class Batch(Routing):
    """POST /v1/images/batches: one job, an image per prompt (a batch takes no media)."""

    kind: ClassVar[JobKind] = JobKind.BATCH
    config: AppConfig
    fields: Fields
    prompts: list[str]

    def plan(self, media: Media) -> Planned:
        job_id = self.kind.new_id()
        return Planned([RoutedJob(job_id, route_batch(self.config, self.fields, self.prompts, job_id), self.fields)])


@dataclass
class RouteQuery(Routing):
    """POST /v1/route: a query in words, routed around the models that cannot take a job now, and answered."""

    config: AppConfig
    body: RouteRequest
    tracker: DeploymentHandle
    enhancer: DeploymentHandle | None
    unavailable: dict[str, str] = field(default_factory=dict)
    reading: Reading | None = None

    async def prepare(self) -> None:
        counts, generators, self.reading = await asyncio.gather(
            self.tracker.queue.remote(), generator_deployments(self.config),
            enhancer_reading(self.enhancer, self.config, self.body.query))
        replicas = {name: replica_states(d) for name, d in generators.items()}
        self.unavailable = unavailable_models(self.config, counts, replicas)

    def plan(self, media: Media) -> Planned:
        job_id = self.kind.new_id()
        routed, answer, fields = answer_query(self.config, self.body, media, job_id, self.unavailable, self.reading)
        return Planned([] if routed is None or fields is None else [RoutedJob(job_id, routed, fields)], answer)


@dataclass(frozen=True)
class Admitted:
    """What a create made: its routing, and the jobs admitted with their views (none when nothing was submitted)."""

    planned: Planned
    jobs: list[Job] = field(default_factory=list)
    views: list[Video | ImageBatch] = field(default_factory=list)


class Intake:
    """The create path, and the two reads it shares with the other handlers: a job's view and the caller's session."""

    def __init__(self, config: AppConfig, tracker: DeploymentHandle, flow: DeploymentHandle,
                 uploader: DeploymentHandle) -> None:
        self._config = config
        self._tracker = tracker
        self._flow = flow
        self._media = MediaResolver(tracker, uploader, config)
        self._links = AssetLinks(config.storage.s3)  # URLs only: files are the Uploader's

    def view(self, job: Job, request: Request) -> Video | ImageBatch:
        return job_view(job, self._links, self._config.public_url or str(request.base_url))

    async def session(self, request: Request, session_id: str | None) -> tuple[Session, list[Upload], list[Job]]:
        """The caller's session with its uploads and jobs; a 404 for none or another key's."""
        found = await self._tracker.get_session.remote(session_id) if session_id is not None else None
        if found is None or not caller_of(request).sees(found[0].key_id):
            raise APIError(404, f"no session with id {session_id!r}", param="session_id", code="not_found")
        return found

    async def admit(self, request: Request, body: BaseModel, routing: Routing, *, raw: dict[str, bytes] | None = None,
                    key: str | None = None, submit: bool = True, wait: bool = False) -> Admitted:
        """Check `body` (validated), route it and, with `submit`, hand its jobs to the FlowRunner, which admits them
        all or none (a full queue, the model's or the key's, raises QueueFull) and runs them; or gives back those an
        earlier request with the same Idempotency-Key `key` made (KeyReused where its body was another).

        `raw`: the files of a body read by hand, whose media fields are resolved; None for a body without media.
        `wait`: the FlowRunner answers once the jobs have ended (a client that leaves cancels them).
        """
        reuse = idempotency(key, request.url.path, body, raw)
        settings: dict[str, Any] = dict(body)  # the images endpoint's body has no webhook and no session
        await check_webhook(settings.get("webhook_url"), self._config.webhooks.private_allowed())
        if (session_id := settings.get("session_id")) is not None:
            await self.session(request, session_id)
        media = Media() if raw is None else await self._media.resolve(body, raw, session_id)
        await routing.prepare()
        planned = await asyncio.to_thread(routing.plan, media)
        if not submit or not planned.jobs:
            return Admitted(planned)
        key_id = caller_of(request).key_id
        work = [r.routed.submission(routing.kind, r.id, r.fields, key_id) for r in planned.jobs]
        limit = self._config.model(work[0].job.model).max_queued_jobs
        jobs = await self._flow.submit.remote(work, limit, self._config.auth.max_active_jobs_per_key, wait, reuse)
        return Admitted(planned, jobs, [self.view(job, request) for job in jobs])
