"""The Gateway: a FastAPI ingress, one handler per endpoint, that validates, classifies, persists and
hands jobs to the FlowRunner. It never touches torch; models and frames stay in their deployments.

`serve.ingress` pickles the routes when the class is defined, so every module-level helper a handler
uses must be defined above the class.
"""


import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile

from deployments.assets import MEDIA_TYPES, AssetLinks
from deployments.jobs import QueueFull
from deployments.jobstore import Job, JobStatus, Session, Upload
from deployments.storage import upload_key
from pipelines.variants import CATALOG, Task
from pipelines.video import MediaError, normalize_image, normalize_video, probe_video
from serve_app.config import AppConfig
from serve_app.errors import APIError, from_validation_error, handle_api_error, handle_validation_error
from serve_app.media import data_url_bytes, decode_media
from serve_app.router import Fields, Media, Routed, generator_name, route, route_batch
from serve_app.schemas import (
    ImageBatch,
    ImageBatchRequest,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    Queue,
    QueueEntry,
    SessionCreateRequest,
    SessionUpload,
    Video,
    VideoCreateRequest,
    VideoDeleted,
    VideoError,
    VideoList,
    VideoPlan,
)
from serve_app.schemas import Session as SessionView

log = logging.getLogger("ray.serve")

MEDIA_FIELDS = ("input_reference", "last_image", "video", "mask", "reference_image")
RETRY_AFTER_S = 30
ID_PREFIXES = {"video": "video", "image": "img", "batch": "batch"}
M = TypeVar("M", bound=BaseModel)

api = FastAPI(title="wan-serve", summary="Every Wan task behind an OpenAI-compatible video API")
api.add_exception_handler(APIError, handle_api_error)
api.add_exception_handler(RequestValidationError, handle_validation_error)


async def read_body(request: Request, max_bytes: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """JSON or multipart into (fields, file bytes). Multipart values are strings; files are bytes."""
    if int(request.headers.get("content-length") or 0) > max_bytes:
        raise APIError(413, f"request body is larger than {max_bytes // 2**20} MiB", code="payload_too_large")
    content_type = request.headers.get("content-type", "")
    raw: dict[str, bytes] = {}
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        fields: dict[str, Any] = {}
        async with request.form(max_part_size=max_bytes) as form:
            for key, value in form.multi_items():
                if key == "input_reference[image_url]":  # the openai SDK's ImageInputReferenceParam
                    key = "input_reference"
                elif key == "input_reference[file_id]":
                    raise APIError(400, "file ids are not supported; upload the image or send a data URL",
                                   param="input_reference", code="unsupported_value")
                if isinstance(value, UploadFile):
                    raw[key] = await value.read()
                else:
                    fields[key] = value
    elif content_type.startswith("application/json"):
        try:
            fields = await request.json()
        except ValueError as exc:
            raise APIError(400, "the body is not valid JSON", code="invalid_json") from exc
        if not isinstance(fields, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
    else:
        raise APIError(400, "send application/json, multipart/form-data or a url-encoded form",
                       code="unsupported_content_type")
    if sum(len(b) for b in raw.values()) > max_bytes:
        raise APIError(413, f"uploads are larger than {max_bytes // 2**20} MiB", code="payload_too_large")
    return fields, raw


def validated(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc


def _url(url: object | None) -> str | None:
    return None if url is None else str(url)


def _error(job: Job) -> VideoError | None:
    return VideoError(code=job.error_code, message=job.error_message or "") if job.error_code else None


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The span [start, stop) that a `Range: bytes=a-b` header asks for, or None for the whole file.

    Video players seek with it (Safari will not play an MP4 without it). Several ranges in one header are
    answered with the whole file, as RFC 9110 allows.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header.removeprefix("bytes=").strip().partition("-")
    try:
        if first:
            start, stop = int(first), min(int(last) + 1, size) if last else size
        else:  # a suffix: the last N bytes
            start, stop = max(size - int(last), 0), size
    except ValueError:
        return None
    if start >= size or stop <= start:
        raise APIError(416, f"range {header!r} is outside the {size} bytes of this asset", code="invalid_range",
                       headers={"Content-Range": f"bytes */{size}"})
    return start, stop


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _replicas(deployment: Any) -> dict[str, int]:
    return {str(k): n for k, n in deployment.replica_states.items()} if deployment else {}


def _upload_view(upload: Upload) -> SessionUpload:
    return SessionUpload(id=upload.id, session_id=upload.session_id, kind=upload.kind, filename=upload.filename,
                         content_type=upload.content_type, size_bytes=upload.size_bytes,
                         created_at=int(upload.created_at), info=upload.info)


@serve.deployment(max_ongoing_requests=200, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Gateway:
    def __init__(self, config: AppConfig, tracker: DeploymentHandle, flow: DeploymentHandle,
                 uploader: DeploymentHandle) -> None:
        self._config = config
        self._tracker = tracker
        self._flow = flow
        self._uploader = uploader
        self._links = AssetLinks(config.storage.s3)  # URLs only: files are the Uploader's
        self._max_bytes = config.max_upload_mb * 2**20
        self._poll = {"openai-poll-after-ms": str(config.poll_after_ms)}
        self._running: set[asyncio.Task] = set()

    # --- wire views ---------------------------------------------------------------------------------

    def _assets(self, job: Job, base: str) -> list[dict[str, Any]]:
        return self._links.views(job.kind, job.id, job.assets, self._config.public_url or base)

    def _video(self, job: Job, base: str) -> Video:
        p = job.params
        return Video(
            id=job.id, created_at=int(job.created_at),
            completed_at=int(job.completed_at) if job.completed_at else None,
            status=job.status.value, progress=job.progress, model=job.model, prompt=job.prompt,
            seconds=p["seconds"], size=p["size"], error=_error(job), task=job.task, num_frames=p["num_frames"],
            fps=p["fps"], seed=p["seed"], num_inference_steps=p["num_inference_steps"], step=job.step,
            total_steps=job.total_steps, stage=job.stage, session_id=job.session_id, plan=job.plan,
            assets=self._assets(job, base), upload=job.upload, webhook=job.webhook,
        )

    def _batch(self, job: Job, base: str) -> ImageBatch:
        p = job.params
        return ImageBatch(
            id=job.id, created_at=int(job.created_at),
            completed_at=int(job.completed_at) if job.completed_at else None, status=job.status.value,
            progress=job.progress, model=job.model, prompts=p["prompts"], size=p["size"], seed=p["seed"],
            session_id=job.session_id, error=_error(job), plan=job.plan, assets=self._assets(job, base),
            upload=job.upload, webhook=job.webhook,
        )

    # --- jobs ---------------------------------------------------------------------------------------

    async def _submit(self, kind: str, job_id: str, routed: Routed, fields: Fields) -> tuple[Job, asyncio.Task]:
        """Persist the job, then run its plan in the background; the task ends when the job does."""
        job = Job(
            id=job_id, kind=kind, model=routed.variant.name, task=routed.plan.task, prompt=fields.prompt,
            plan=routed.plan.model_dump(), params=routed.params, session_id=fields.session_id,
            webhook_url=fields.webhook_url, total_steps=routed.plan.total_steps,
        )
        limit = self._config.model(routed.variant.name).max_queued_jobs
        try:
            await self._tracker.create.remote(job, limit)
        except QueueFull as exc:
            raise APIError(429, str(exc), code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
        task = asyncio.create_task(self._run(job, routed))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return job, task

    async def _run(self, job: Job, routed: Routed) -> None:
        try:
            await self._flow.run.remote(job.id, routed.plan, routed.inputs)
        except Exception as exc:
            log.exception("flow runner failed for %s", job.id)
            await self._tracker.finish.remote(job.id, JobStatus.FAILED, error=("flow_failed", str(exc)[:500]))

    async def _job(self, job_id: str, kind: str = "video") -> Job:
        job = await self._tracker.get.remote(job_id) if job_id.startswith(f"{ID_PREFIXES[kind]}_") else None
        if job is None or job.kind != kind:
            raise APIError(404, f"no {kind} with id {job_id!r}", param=f"{kind}_id", code="not_found")
        return job

    async def _content(self, request: Request, job: Job, name: str) -> Response:
        """An asset's bytes, streamed from the Uploader that stores them, whole or the requested range."""
        if job.status is not JobStatus.COMPLETED:
            raise APIError(409, f"{job.id} is {job.status.value}; content is ready once it is completed",
                           code="not_ready")
        names = [name, "combined"] if name == "video" else [name]  # a long video's main asset is `combined`
        record = next((a for n in names for a in job.assets if a["name"] == n), None)
        if record is None:
            have = ", ".join(a["name"] for a in job.assets)
            raise APIError(404, f"{job.id} has no {name}; it has {have}", param="variant", code="not_found")
        size = record["file_size_bytes"]
        span = _byte_range(request.headers.get("range"), size)
        start, stop = span or (0, size)
        chunks = self._uploader.options(stream=True).read.remote(record["key"], start, stop)
        try:
            first = await anext(chunks, b"")
        except FileNotFoundError as exc:
            raise APIError(404, f"{record['name']} of {job.id} is no longer stored", param="variant",
                           code="not_found") from exc
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(stop - start),
                   "Content-Disposition": f'attachment; filename="{job.id}-{record["name"]}.{record["format"]}"'}
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        return StreamingResponse(_prepend(first, chunks), status_code=206 if span else 200,
                                 media_type=MEDIA_TYPES[record["format"]], headers=headers)

    async def _delete(self, job: Job) -> None:
        """Cancel a queued or running job (it ends `cancelled` within one step); delete a finished one."""
        if not job.status.terminal:
            await self._tracker.cancel.remote(job.id)
            return
        await self._uploader.delete.remote(job.assets)
        await self._tracker.delete.remote(job.id)

    async def _media(self, body: BaseModel, raw: dict[str, bytes], session_id: str | None) -> Media:
        """Media from uploaded files, data URLs, or ids of files uploaded into the job's session."""
        files = dict(raw)
        unknown = set(files) - set(MEDIA_FIELDS)
        if unknown:
            raise APIError(400, f"unexpected file field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
        for name in MEDIA_FIELDS:
            value = getattr(body, name)
            if isinstance(value, dict):
                value = value.get("image_url")
            if value is None or name in files:
                continue
            if value.startswith("upload_"):
                files[name] = await self._session_file(session_id, value, name)
            else:
                files[name] = data_url_bytes(value, name)
        return await asyncio.to_thread(decode_media, files)

    async def _session_file(self, session_id: str | None, upload_id: str, param: str) -> bytes:
        if session_id is None:
            raise APIError(400, f"{param} names an upload; send the session_id it was uploaded to",
                           param="session_id", code="missing_input")
        upload: Upload | None = await self._tracker.upload.remote(session_id, upload_id)
        if upload is None:
            raise APIError(404, f"session {session_id} has no upload {upload_id!r}", param=param, code="not_found")
        return await self._uploader.get.remote(upload.key)

    async def _check_session(self, session_id: str | None) -> None:
        if session_id is not None and await self._tracker.get_session.remote(session_id) is None:
            raise APIError(404, f"no session with id {session_id!r}", param="session_id", code="not_found")

    # --- /v1/videos ---------------------------------------------------------------------------------

    @api.post("/v1/videos", response_model=Video | VideoPlan)
    async def create_video(self, request: Request, dry_run: bool = False) -> JSONResponse:
        fields, raw = await read_body(request, self._max_bytes)
        body = validated(VideoCreateRequest, fields)
        await self._check_session(body.session_id)
        media = await self._media(body, raw, body.session_id)
        job_id = f"video_{uuid.uuid4().hex}"
        args = Fields(**body.model_dump(exclude={*MEDIA_FIELDS, "webhook_url"}), webhook_url=_url(body.webhook_url))
        routed = await asyncio.to_thread(route, self._config, args, media, job_id)
        if dry_run:
            plan = VideoPlan(model=routed.variant.name, task=routed.plan.task, plan=routed.plan.model_dump(),
                             **{k: v for k, v in routed.params.items() if k in VideoPlan.model_fields})
            return JSONResponse(plan.model_dump())
        job, _ = await self._submit("video", job_id, routed, args)
        return JSONResponse(self._video(job, str(request.base_url)).model_dump(), headers=self._poll)

    @api.get("/v1/videos", response_model=VideoList)
    async def list_videos(
        self,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> VideoList:
        jobs, has_more = await self._tracker.list.remote("video", after, limit, order)
        data = [self._video(j, str(request.base_url)) for j in jobs]
        return VideoList(data=data, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None, has_more=has_more)

    @api.get("/v1/videos/{video_id}", response_model=Video)
    async def get_video(self, request: Request, video_id: str) -> JSONResponse:
        job = await self._job(video_id)
        video = self._video(job, str(request.base_url))
        if job.status is JobStatus.QUEUED:
            video.queue_position = await self._tracker.queue_position.remote(job.id)
        return JSONResponse(video.model_dump(), headers=self._poll)

    @api.delete("/v1/videos/{video_id}", response_model=VideoDeleted)
    async def delete_video(self, video_id: str) -> VideoDeleted:
        await self._delete(await self._job(video_id))
        return VideoDeleted(id=video_id)

    @api.get("/v1/videos/{video_id}/content")
    async def video_content(self, request: Request, video_id: str, variant: str = "video") -> Response:
        """`variant`: video (the main video), thumbnail, or any asset's name (initial, extension_001, ...)."""
        return await self._content(request, await self._job(video_id), variant)

    @api.post("/v1/videos/{video_id}/upload", response_model=Video)
    async def retry_upload(self, request: Request, video_id: str) -> Video:
        """Retry copying a completed job's assets to the object store after an upload failed."""
        job = await self._job(video_id)
        if self._config.storage.s3 is None:
            raise APIError(409, "no object store is configured", code="no_object_store")
        if job.status is not JobStatus.COMPLETED:
            raise APIError(409, f"{job.id} is {job.status.value}; only a completed job's assets are uploaded",
                           code="not_ready")
        assets, upload = await self._uploader.push.remote(job.assets)
        job = await self._tracker.annotate.remote(job.id, assets=assets, upload=upload)
        return self._video(job, str(request.base_url))

    # --- /v1/images ---------------------------------------------------------------------------------

    @api.post("/v1/images/generations", response_model=ImagesResponse)
    async def generate_images(self, request: Request, body: ImageGenerationRequest) -> ImagesResponse:
        """OpenAI's synchronous images API: n one-frame generations with consecutive seeds."""
        params = body.model_dump(exclude={"n", "response_format", "quality", "style", "user"})
        fields = Fields(**params, task=Task.T2I, num_frames=1)
        submitted = []
        for _ in range(body.n):
            job_id = f"img_{uuid.uuid4().hex}"
            routed = route(self._config, fields, Media(), job_id)
            fields.seed = routed.params["seed"] + 1  # the next image takes the next seed
            submitted.append(await self._submit("image", job_id, routed, fields))
        await asyncio.gather(*(task for _, task in submitted))
        data = []
        for job, _ in submitted:
            job = await self._job(job.id, "image")
            if job.status is not JobStatus.COMPLETED:
                raise APIError(500, f"image generation {job.status.value}: {job.error_message}", code=job.error_code)
            if body.response_format == "url":
                data.append(ImageData(url=self._assets(job, str(request.base_url))[0]["url"]))
            else:
                image = await self._uploader.get.remote(job.assets[0]["key"])
                data.append(ImageData(b64_json=base64.b64encode(image).decode()))
        return ImagesResponse(created=int(time.time()), data=data)

    @api.get("/v1/images/{image_id}/content")
    async def image_content(self, request: Request, image_id: str, variant: str = "image") -> Response:
        return await self._content(request, await self._job(image_id, "image"), variant)

    # --- /v1/images/batches -------------------------------------------------------------------------

    @api.post("/v1/images/batches", response_model=ImageBatch)
    async def create_batch(self, request: Request, body: ImageBatchRequest) -> JSONResponse:
        await self._check_session(body.session_id)
        fields = Fields(prompt=body.prompts[0], **body.model_dump(exclude={"prompts", "webhook_url"}),
                        webhook_url=_url(body.webhook_url))
        job_id = f"batch_{uuid.uuid4().hex}"
        routed = route_batch(self._config, fields, body.prompts, job_id)
        job, _ = await self._submit("batch", job_id, routed, fields)
        return JSONResponse(self._batch(job, str(request.base_url)).model_dump(), headers=self._poll)

    @api.get("/v1/images/batches/{batch_id}", response_model=ImageBatch)
    async def get_batch(self, request: Request, batch_id: str) -> JSONResponse:
        job = await self._job(batch_id, "batch")
        return JSONResponse(self._batch(job, str(request.base_url)).model_dump(), headers=self._poll)

    @api.get("/v1/images/batches/{batch_id}/images/{index}")
    async def batch_image(self, request: Request, batch_id: str, index: int) -> Response:
        """Image `index` (0-based, in the order of the prompts) as PNG."""
        return await self._content(request, await self._job(batch_id, "batch"), f"image_{index:03d}")

    @api.get("/v1/images/batches/{batch_id}/content")
    async def batch_content(self, request: Request, batch_id: str, variant: str = "images") -> Response:
        """Every image as one ZIP (`variant=images`), or one image by its asset name."""
        return await self._content(request, await self._job(batch_id, "batch"), variant)

    @api.delete("/v1/images/batches/{batch_id}", response_model=VideoDeleted)
    async def delete_batch(self, batch_id: str) -> dict[str, Any]:
        await self._delete(await self._job(batch_id, "batch"))
        return {"id": batch_id, "object": "image.batch.deleted", "deleted": True}

    # --- /v1/sessions -------------------------------------------------------------------------------

    @api.post("/v1/sessions", response_model=SessionView)
    async def create_session(self, body: SessionCreateRequest | None = None) -> SessionView:
        session = Session(id=f"sess_{uuid.uuid4().hex}", metadata=body.metadata if body else {})
        await self._tracker.create_session.remote(session)
        return SessionView(id=session.id, created_at=int(session.created_at), metadata=session.metadata)

    @api.get("/v1/sessions/{session_id}", response_model=SessionView)
    async def get_session(self, request: Request, session_id: str) -> SessionView:
        """The session with its uploads, its videos and its image batches, each with their assets."""
        found = await self._tracker.get_session.remote(session_id)
        if found is None:
            raise APIError(404, f"no session with id {session_id!r}", param="session_id", code="not_found")
        session, uploads, jobs = found
        base = str(request.base_url)
        return SessionView(
            id=session.id, created_at=int(session.created_at), metadata=session.metadata,
            uploads=[_upload_view(u) for u in uploads],
            videos=[self._video(j, base) for j in jobs if j.kind == "video"],
            image_batches=[self._batch(j, base) for j in jobs if j.kind == "batch"],
        )

    @api.post("/v1/sessions/{session_id}/uploads", response_model=SessionUpload)
    async def upload_to_session(self, request: Request, session_id: str) -> SessionUpload:
        """Upload a video (MP4, MOV, MKV, AVI, WebM: kept as, or converted to, MP4) or an image (kept as
        RGB JPEG) in the multipart field `file`; refer to it by id in a video's media fields."""
        await self._check_session(session_id)
        if int(request.headers.get("content-length") or 0) > self._max_bytes:
            raise APIError(413, f"the upload is larger than {self._config.max_upload_mb} MiB",
                           code="payload_too_large")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "send the file as multipart/form-data field `file`", code="unsupported_content_type")
        async with request.form(max_part_size=self._max_bytes) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise APIError(400, "send the file as multipart field `file`", param="file", code="missing_input")
            data, filename = await file.read(), file.filename or "file"
        upload_id = f"upload_{uuid.uuid4().hex}"
        upload, stored = await asyncio.to_thread(self._normalize_upload, session_id, upload_id, data, filename)
        await self._uploader.put.remote(upload.key, stored, upload.content_type)
        await self._tracker.add_upload.remote(upload)
        return _upload_view(upload)

    def _normalize_upload(self, session_id: str, upload_id: str, data: bytes, filename: str) -> tuple[Upload, bytes]:
        try:
            image = normalize_image(data)
        except MediaError:
            image = None
        try:
            if image is not None:
                kind, ext, stored, info = "image", "jpg", image, {}
            else:
                kind, ext, stored = "video", "mp4", normalize_video(data)
                probe = probe_video(stored)
                info = dict(width=probe.width, height=probe.height, frames=probe.frames, fps=probe.fps,
                            duration_s=probe.duration_s, has_audio=probe.has_audio)
        except MediaError as exc:
            raise APIError(422, f"file: {exc}", param="file", code="invalid_media") from exc
        upload = Upload(id=upload_id, session_id=session_id, kind=kind, filename=filename,
                        key=upload_key(session_id, upload_id, ext), content_type=MEDIA_TYPES[ext],
                        size_bytes=len(stored), info=info)
        return upload, stored

    # --- models, queue and health --------------------------------------------------------------------

    async def _generators(self) -> dict[str, Any]:
        """Each served model's generator deployment status, from Serve."""
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(serve.get_replica_context().app_name)
        deployments = app.deployments if app else {}
        return {m.name: deployments.get(generator_name(m.name)) for m in self._config.models}

    @api.get("/v1/queue", response_model=Queue)
    async def queue(self) -> Queue:
        """Per model: jobs waiting, jobs running, the admission limit, and the generator's replicas."""
        counts, generators = await asyncio.gather(self._tracker.queue.remote(), self._generators())
        return Queue(data=[
            QueueEntry(model=m.name, **counts.get(m.name, {"queued": 0, "in_progress": 0}),
                       max_queued_jobs=m.max_queued_jobs, replicas=_replicas(generators[m.name]))
            for m in self._config.models
        ])

    @api.get("/v1/models", response_model=ModelList)
    async def list_models(self) -> ModelList:
        generators = await self._generators()
        cards = []
        for m in self._config.models:
            v = CATALOG[m.name]
            d = generators[m.name]
            cards.append(ModelCard(
                id=v.name, created=0, description=v.description, tasks=[t.value for t in v.tasks],
                default_for=[t.value for t in v.tasks if self._config.default_model(t) == v.name],
                fps=v.fps, sizes={k: f"{w}x{h}" for k, (w, h) in v.sizes.items()}, max_frames=v.max_frames,
                gpus=m.num_gpus, gpu_memory_fraction=m.memory_fraction,
                replicas={"status": d.status.value if d else "UNKNOWN", "states": _replicas(d),
                          "message": d.message if d else ""},
            ))
        return ModelList(data=cards)

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

