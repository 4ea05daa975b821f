"""The Gateway: one thin handler per endpoint, in a plain class over the deployments' handles. It validates, routes
and forwards: a job is created, run and ended by the FlowRunner, and read back from the JobTracker. It keeps no job
state; it never touches torch. Every create goes one way in (`serve_app/intake.py`).

The class holds no FastAPI app: `@endpoint` marks each handler with its route, and `build_api` makes a fresh app per
ingress with those routes bound to one Gateway's methods: a test's, over fakes of the handles, or a Serve replica's
(`GatewayIngress`, which Serve asks for its app once the replica is built). Nothing module-global is mutated, no app
is pickled, and Serve's class-based view (which rewrites the handlers' signatures in the process that decorates the
class) is not needed. FastAPI reads the handlers' annotations to tell the request from the body, so they stay real
objects here (no `from __future__ import annotations`).
"""

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from sse_starlette import EventSourceResponse

from domain.records import Job, JobKind, JobStatus, Session, new_id
from domain.views import upload_view
from serve_app import errors, openapi, studio
from serve_app.auth import Keys, authorize, caller_of
from serve_app.body import BodyLimit, read_body, read_upload, validated
from serve_app.cards import Generators, generator_deployments, model_card, replica_states
from serve_app.config import AppConfig
from serve_app.content import asset_response
from serve_app.errors import APIError
from serve_app.events import Feeds, State, event_stream
from serve_app.idempotency import KeyHeader
from serve_app.intake import Batch, Images, Intake, OneVideo, RouteQuery
from serve_app.limits import check_metadata, media_bounds
from serve_app.media import MEDIA_FIELDS, normalize_upload
from serve_app.openapi import EVENTS, UPLOAD_BODY, video_body
from serve_app.schemas import (
    BatchDeleted,
    ImageBatch,
    ImageBatchRequest,
    ImageData,
    ImageDeleted,
    ImageGenerationRequest,
    ImagesResponse,
    RouteAnswer,
    RouteRequest,
    SessionCreateRequest,
    SessionDeleted,
    SessionUpload,
    Video,
    VideoCreateRequest,
    VideoDeleted,
    VideoList,
    VideoPlan,
)
from serve_app.schemas import Session as SessionView
from serve_app.service_schemas import ModelList, Queue, QueueEntry

LastEventId = Annotated[str | None, Header(description="resume after this event id (the job's version)")]
log = logging.getLogger("ray.serve")
ROUTE = "__route__"  # where `endpoint` keeps a handler's route: (method, path, FastAPI's route options)
H = TypeVar("H", bound=Callable[..., Any])


def endpoint(method: str, path: str, **options: Any) -> Callable[[H], H]:
    """Mark a Gateway method as the handler of `method path`; `build_api` adds the route to each app it builds."""

    def mark(handler: H) -> H:
        setattr(handler, ROUTE, (method, path, options))
        return handler

    return mark


class Gateway:
    def __init__(self, config: AppConfig, tracker: DeploymentHandle, flow: DeploymentHandle,
                 uploader: DeploymentHandle, enhancer: DeploymentHandle | None = None) -> None:
        self._config = config
        self._tracker = tracker
        self._flow = flow
        self._uploader = uploader
        self._enhancer = enhancer  # reads queries in words for /v1/route, where one is configured
        self._intake = Intake(config, tracker, flow, uploader)
        self._generators = Generators(config)  # Serve's replica states, briefly cached, for a queued job's stage
        self._feeds = Feeds(tracker, self._generators.waiting)  # SSE listeners here, one tracker watch per job
        self._poll = {"openai-poll-after-ms": str(config.poll_after_ms)}

    def _view(self, job: Job, request: Request) -> Video | ImageBatch:
        return self._intake.view(job, request)

    async def _job(self, request: Request, job_id: str, kind: JobKind = JobKind.VIDEO) -> Job:
        """The caller's job, or a 404 naming the id field of its kind: another key's job, or one being deleted,
        is not there for this caller."""
        job = await self._tracker.get.remote(job_id) if kind.owns(job_id) else None
        if job is None or job.kind != kind or job.delete_requested or not caller_of(request).sees(job.key_id):
            raise APIError(404, f"no {kind} with id {job_id!r}", param=f"{kind}_id", code="not_found")
        return job

    async def _state(self, job: Job) -> State:
        queued = job.status is JobStatus.QUEUED
        position = await self._tracker.queue_position.remote(job.id) if queued else None
        return State(job, position, await self._generators.waiting(job))

    async def _events(self, request: Request, job: Job, last_event_id: str | None) -> Response:
        return event_stream(self._feeds, await self._state(job), last_event_id, lambda j: self._view(j, request),
                            self._config.events_keepalive_s)

    async def _delete(self, job: Job) -> None:
        """A finished job's files and record go now; a queued or running one is stopped, then removed at its end.
        Either way it is gone for clients from here on."""
        await self._tracker.remove.remote(job.id)  # the one removal of a job and its files (JobTracker.remove)

    # --- /v1/videos ---------------------------------------------------------------------------------

    @endpoint("POST", "/v1/videos", response_model=Video | VideoPlan, openapi_extra=video_body(MEDIA_FIELDS))
    async def create_video(self, request: Request, dry_run: bool = False,
                           idempotency_key: KeyHeader = None) -> JSONResponse:
        fields, raw = await read_body(request, self._config.limits)
        body = validated(VideoCreateRequest, fields)
        made = await self._intake.admit(request, body, OneVideo(self._config, body.to_fields()), raw=raw,
                                        key=idempotency_key, submit=not dry_run)
        if dry_run:
            routed = made.planned.jobs[0].routed
            plan = VideoPlan(model=routed.variant.name, task=routed.plan.task, plan=routed.plan.model_dump(),
                             **{k: v for k, v in asdict(routed.params).items() if k in VideoPlan.model_fields})
            return JSONResponse(plan.model_dump())
        return JSONResponse(made.views[0].model_dump(), headers=self._poll)

    @endpoint("GET", "/v1/videos", response_model=VideoList)
    async def list_videos(
        self,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> VideoList:
        caller = caller_of(request)
        jobs, has_more = await self._tracker.list.remote(JobKind.VIDEO, after, limit, order,
                                                         None if caller.admin else caller.key_id)
        data = [self._view(j, request) for j in jobs]
        return VideoList(data=data, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None, has_more=has_more)

    @endpoint("GET", "/v1/videos/{video_id}", response_model=Video)
    async def get_video(self, request: Request, video_id: str) -> JSONResponse:
        state = await self._state(await self._job(request, video_id))
        video = self._view(state.job, request)
        video.queue_position, video.stage, video.stage_detail = state.position, state.stage, state.waiting
        return JSONResponse(video.model_dump(), headers=self._poll)

    @endpoint("GET", "/v1/videos/{video_id}/events", response_class=EventSourceResponse, responses=EVENTS)
    async def video_events(self, request: Request, video_id: str, last_event_id: LastEventId = None) -> Response:
        """Progress as Server-Sent Events: `video.progress` on each change, then `video.completed`, `video.failed`
        or `video.cancelled` with the video, then the stream ends."""
        return await self._events(request, await self._job(request, video_id), last_event_id)

    @endpoint("DELETE", "/v1/videos/{video_id}", response_model=VideoDeleted)
    async def delete_video(self, request: Request, video_id: str) -> VideoDeleted:
        """Delete a video: a running one is stopped first. Either way it is a 404 from now on."""
        await self._delete(await self._job(request, video_id))
        return VideoDeleted(id=video_id)

    @endpoint("POST", "/v1/videos/{video_id}/cancel", response_model=Video)
    async def cancel_video(self, request: Request, video_id: str) -> Video:
        """Stop a queued or running video within one denoising step; its record stays, as `cancelled`."""
        job = await self._job(request, video_id)
        if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
            raise APIError(409, f"{job.id} has already {job.status.value}", code="not_cancellable")
        return self._view(await self._tracker.cancel.remote(job.id), request)

    @endpoint("GET", "/v1/videos/{video_id}/content")
    async def video_content(self, request: Request, video_id: str, variant: str = "video") -> Response:
        """`variant`: video (the main video), thumbnail, or any asset's name (initial, extension_001, ...)."""
        job = await self._job(request, video_id)
        return await asset_response(self._uploader, job, variant, request.headers.get("range"))

    @endpoint("POST", "/v1/videos/{video_id}/upload", response_model=Video)
    async def retry_upload(self, request: Request, video_id: str) -> Video:
        """Retry copying a completed job's assets to the object store after an upload failed."""
        job = await self._job(request, video_id)
        if self._config.storage.s3 is None:
            raise APIError(409, "no object store is configured", code="no_object_store")
        if job.status is not JobStatus.COMPLETED:
            raise APIError(409, f"{job.id} is {job.status.value}; only a completed job's assets are uploaded",
                           code="not_ready")
        assets, upload = await self._uploader.push.remote(job.assets)
        return self._view(await self._tracker.annotate.remote(job.id, assets=assets, upload=upload), request)

    # --- /v1/images ---------------------------------------------------------------------------------

    @endpoint("POST", "/v1/images/generations", response_model=ImagesResponse)
    async def generate_images(self, request: Request, body: ImageGenerationRequest,
                              idempotency_key: KeyHeader = None) -> ImagesResponse:
        """OpenAI's synchronous images API: n one-frame generations with consecutive seeds, admitted together.

        A client that goes away before they end cancels them.
        """
        made = await self._intake.admit(request, body, Images(self._config, body.to_fields(), body.n),
                                        key=idempotency_key, wait=True)
        data = []
        for job, view in zip(made.jobs, made.views, strict=True):
            if job.status is not JobStatus.COMPLETED:
                raise APIError(500, f"image generation {job.status.value}: {job.error_message}", code=job.error_code)
            if body.response_format == "url":
                data.append(ImageData(url=view.assets[0].url))
            else:
                image = await self._uploader.get.remote(job.assets[0]["key"])
                data.append(ImageData(b64_json=base64.b64encode(image).decode()))
        return ImagesResponse(created=int(time.time()), data=data)

    @endpoint("DELETE", "/v1/images/{image_id}", response_model=ImageDeleted)
    async def delete_image(self, request: Request, image_id: str) -> ImageDeleted:
        """Delete an image made by /v1/images/generations, with its file."""
        await self._delete(await self._job(request, image_id, JobKind.IMAGE))
        return ImageDeleted(id=image_id)

    @endpoint("GET", "/v1/images/{image_id}/content")
    async def image_content(self, request: Request, image_id: str, variant: str = "image") -> Response:
        job = await self._job(request, image_id, JobKind.IMAGE)
        return await asset_response(self._uploader, job, variant, request.headers.get("range"))

    # --- /v1/images/batches -------------------------------------------------------------------------

    @endpoint("POST", "/v1/images/batches", response_model=ImageBatch)
    async def create_batch(self, request: Request, body: ImageBatchRequest,
                           idempotency_key: KeyHeader = None) -> JSONResponse:
        made = await self._intake.admit(request, body, Batch(self._config, body.to_fields(), body.prompts),
                                        key=idempotency_key)
        return JSONResponse(made.views[0].model_dump(), headers=self._poll)

    @endpoint("GET", "/v1/images/batches/{batch_id}", response_model=ImageBatch)
    async def get_batch(self, request: Request, batch_id: str) -> JSONResponse:
        job = await self._job(request, batch_id, JobKind.BATCH)
        return JSONResponse(self._view(job, request).model_dump(), headers=self._poll)

    @endpoint("GET", "/v1/images/batches/{batch_id}/events", response_class=EventSourceResponse, responses=EVENTS)
    async def batch_events(self, request: Request, batch_id: str, last_event_id: LastEventId = None) -> Response:
        """Progress as Server-Sent Events: `batch.progress`, then `batch.completed` (or failed, cancelled)."""
        return await self._events(request, await self._job(request, batch_id, JobKind.BATCH), last_event_id)

    @endpoint("GET", "/v1/images/batches/{batch_id}/images/{index}")
    async def batch_image(self, request: Request, batch_id: str, index: int) -> Response:
        """Image `index` (0-based, in the order of the prompts) as PNG."""
        job = await self._job(request, batch_id, JobKind.BATCH)
        return await asset_response(self._uploader, job, f"image_{index:03d}", request.headers.get("range"))

    @endpoint("GET", "/v1/images/batches/{batch_id}/content")
    async def batch_content(self, request: Request, batch_id: str, variant: str = "images") -> Response:
        """Every image as one ZIP (`variant=images`), or one image by its asset name."""
        job = await self._job(request, batch_id, JobKind.BATCH)
        return await asset_response(self._uploader, job, variant, request.headers.get("range"))

    @endpoint("DELETE", "/v1/images/batches/{batch_id}", response_model=BatchDeleted)
    async def delete_batch(self, request: Request, batch_id: str) -> BatchDeleted:
        await self._delete(await self._job(request, batch_id, JobKind.BATCH))
        return BatchDeleted(id=batch_id)

    # --- /v1/sessions -------------------------------------------------------------------------------

    @endpoint("POST", "/v1/sessions", response_model=SessionView)
    async def create_session(self, request: Request, body: SessionCreateRequest | None = None) -> SessionView:
        metadata = body.metadata if body else {}
        check_metadata(self._config.limits, metadata)
        session = Session(id=new_id("sess"), metadata=metadata, key_id=caller_of(request).key_id)
        await self._tracker.create_session.remote(session)
        return SessionView(id=session.id, created_at=int(session.created_at), metadata=session.metadata)

    @endpoint("GET", "/v1/sessions/{session_id}", response_model=SessionView)
    async def get_session(self, request: Request, session_id: str) -> SessionView:
        """The session with its uploads, its videos and its image batches, each with their assets."""
        session, uploads, jobs = await self._intake.session(request, session_id)
        views = [self._view(j, request) for j in jobs if j.kind in (JobKind.VIDEO, JobKind.BATCH)]
        return SessionView(
            id=session.id, created_at=int(session.created_at), metadata=session.metadata,
            uploads=[upload_view(u) for u in uploads], videos=[v for v in views if isinstance(v, Video)],
            image_batches=[v for v in views if isinstance(v, ImageBatch)],
        )

    @endpoint("DELETE", "/v1/sessions/{session_id}", response_model=SessionDeleted)
    async def delete_session(self, request: Request, session_id: str) -> SessionDeleted:
        """Delete a session with its uploads, videos and image batches and their files; running jobs in it are
        stopped first. It is a 404 from now on."""
        await self._intake.session(request, session_id)
        await self._tracker.delete_session.remote(session_id)
        return SessionDeleted(id=session_id)

    @endpoint("POST", "/v1/sessions/{session_id}/uploads", response_model=SessionUpload, openapi_extra=UPLOAD_BODY)
    async def upload_to_session(self, request: Request, session_id: str) -> SessionUpload:
        """Upload a video (MP4, MOV, MKV, AVI, WebM: kept as, or converted to, MP4) or an image (kept as
        RGB JPEG) in the multipart field `file`; refer to it by id in a video's media fields."""
        await self._intake.session(request, session_id)
        data, filename = await read_upload(request, self._config.limits)
        upload, stored = await asyncio.to_thread(normalize_upload, session_id, new_id("upload"), data,
                                                 filename, media_bounds(self._config.limits))
        upload.key_id = caller_of(request).key_id
        await self._uploader.put.remote(upload.key, stored, upload.content_type)
        await self._tracker.add_upload.remote(upload)
        return upload_view(upload)

    # --- models, queue and health --------------------------------------------------------------------

    @endpoint("GET", "/v1/queue", response_model=Queue)
    async def queue(self) -> Queue:
        """Per model: jobs waiting, jobs running, the admission limit, and the generator's replicas."""
        counts, generators = await asyncio.gather(self._tracker.queue.remote(), generator_deployments(self._config))
        return Queue(data=[
            QueueEntry(model=m.name, **counts.get(m.name, {"queued": 0, "in_progress": 0}),
                       max_queued_jobs=m.max_queued_jobs, replicas=replica_states(generators[m.name]))
            for m in self._config.models
        ])

    @endpoint("GET", "/v1/models", response_model=ModelList)
    async def list_models(self) -> ModelList:
        generators = await generator_deployments(self._config)
        return ModelList(data=[model_card(self._config, m, generators[m.name]) for m in self._config.models])

    @endpoint("POST", "/v1/route", response_model=RouteAnswer, openapi_extra=video_body(MEDIA_FIELDS, RouteRequest))
    async def route_query(self, request: Request) -> RouteAnswer:
        """A query in words (and optional media, preferences) classified and routed; with `create`, the job too."""
        fields, raw = await read_body(request, self._config.limits)
        body = validated(RouteRequest, fields)
        made = await self._intake.admit(request, body, RouteQuery(self._config, body, self._tracker, self._enhancer),
                                        raw=raw, submit=body.create)
        answer = made.planned.answer
        assert answer is not None  # a query's routing always answers
        if made.views:
            answer.video = made.views[0]
        return answer

    @endpoint("GET", "/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}


def build_api(config: AppConfig, keys: Keys, gateway: Gateway) -> FastAPI:
    """A fresh app for one ingress: errors in OpenAI's shape, the body limit, the OpenAPI document's extra parts, the
    studio and the docs where the config has them, and every `endpoint` routed to that method of `gateway`."""
    docs = {} if config.api_docs else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    api = FastAPI(title="wan-serve", summary="Every Wan task behind an OpenAI-compatible video API",
                  dependencies=[Depends(authorize)], **docs)
    api.state.keys = keys  # read by `authorize`, the dependency every route but /health and / runs
    api.state.limits = config.limits  # read by `BodyLimit`
    errors.install(api)
    api.add_middleware(BodyLimit)  # every body within config.limits, whatever reads it
    openapi.install(api)
    if config.studio:
        studio.install(api)  # the web studio at /
    for name, handler in vars(Gateway).items():
        if (route := getattr(handler, ROUTE, None)) is not None:
            method, path, options = route
            api.add_api_route(path, getattr(gateway, name), methods=[method], **options)
    return api


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class GatewayIngress(Gateway):
    """The Gateway on a Serve replica: Serve builds it with the deployment's arguments, then asks it for its app
    (`__serve_build_asgi_app__`), so each replica has its own, routed to itself."""

    def __init__(self, config: AppConfig, tracker: DeploymentHandle, flow: DeploymentHandle,
                 uploader: DeploymentHandle, keys: Keys, enhancer: DeploymentHandle | None = None) -> None:
        super().__init__(config, tracker, flow, uploader, enhancer)
        self._keys = keys
        if keys.open:
            log.warning("no API key is configured: the service is open to anyone who can reach it")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self._config, self._keys, self)
