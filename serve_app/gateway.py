"""The Gateway: a FastAPI ingress, one handler per endpoint, that validates, classifies, persists and
hands jobs to the FlowRunner. It never touches torch; models and frames stay in their deployments.
"""


import asyncio
import base64
import logging
import time
import uuid
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile

from deployments.jobs import QueueFull
from deployments.jobstore import Job, JobStatus
from deployments.plan import Plan
from deployments.storage import ASSET_TYPES, open_storage
from pipelines.request import GenerationRequest
from pipelines.variants import CATALOG, Task
from serve_app.config import AppConfig
from serve_app.errors import APIError, from_validation_error, handle_api_error, handle_validation_error
from serve_app.media import data_url_bytes, decode_media
from serve_app.router import Fields, Media, Routed, generator_name, route
from serve_app.schemas import (
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    Video,
    VideoCreateRequest,
    VideoDeleted,
    VideoError,
    VideoList,
    VideoPlan,
)

log = logging.getLogger("ray.serve")

MEDIA_FIELDS = ("input_reference", "last_image", "video", "mask")
RETRY_AFTER_S = 30

api = FastAPI(title="wan-serve", summary="Every Wan task behind an OpenAI-compatible video API")
api.add_exception_handler(APIError, handle_api_error)
api.add_exception_handler(RequestValidationError, handle_validation_error)


def to_video(job: Job) -> Video:
    p = job.params
    return Video(
        id=job.id, created_at=int(job.created_at),
        completed_at=int(job.completed_at) if job.completed_at else None,
        status=job.status.value, progress=job.progress, model=job.model, prompt=job.prompt,
        seconds=p["seconds"], size=p["size"],
        error=VideoError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        task=job.task, num_frames=p["num_frames"], fps=p["fps"], seed=p["seed"],
        num_inference_steps=p["num_inference_steps"], step=job.step, plan=job.plan,
    )


def job_params(routed: Routed) -> dict[str, Any]:
    """The resolved generation parameters a client sees on the video object."""
    req = routed.request
    return {"size": f"{req.width}x{req.height}", "num_frames": req.num_frames, "fps": routed.fps,
            "seconds": f"{routed.variant.seconds_for_frames(req.num_frames):g}", "seed": req.seed,
            "num_inference_steps": req.num_inference_steps}


async def read_body(request: Request, max_bytes: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """JSON or multipart into (fields, media bytes). Multipart values are strings; files are bytes."""
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


def media_from_fields(body: VideoCreateRequest, raw: dict[str, bytes]) -> dict[str, bytes]:
    """Media sent as data URLs in the body, merged with uploaded files."""
    for name in MEDIA_FIELDS:
        value = getattr(body, name)
        if isinstance(value, dict):
            value = value.get("image_url")
        if value is not None and name not in raw:
            raw[name] = data_url_bytes(value, name)
    unknown = set(raw) - set(MEDIA_FIELDS)
    if unknown:
        raise APIError(400, f"unexpected file field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    return raw


@serve.deployment(max_ongoing_requests=200, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Gateway:
    def __init__(self, config: AppConfig, tracker: DeploymentHandle, flow: DeploymentHandle) -> None:
        self._config = config
        self._tracker = tracker
        self._flow = flow
        self._storage = open_storage(config.storage.kind, config.storage.root)
        self._max_bytes = config.max_upload_mb * 2**20
        self._poll = {"openai-poll-after-ms": str(config.poll_after_ms)}
        self._running: set[asyncio.Task] = set()

    # --- jobs ---------------------------------------------------------------------------------------

    async def _submit(self, kind: str, routed: Routed) -> tuple[Job, asyncio.Task]:
        """Persist the job, then run its plan in the background; the task ends when the job does."""
        req, variant = routed.request, routed.variant
        job = Job(
            id=f"{kind}_{uuid.uuid4().hex}", kind=kind, model=variant.name, task=req.task.value,
            prompt=req.prompt, plan=routed.plan.model_dump(), params=job_params(routed),
        )
        limit = self._config.model(variant.name).max_queued_jobs
        try:
            await self._tracker.create.remote(job, limit)
        except QueueFull as exc:
            raise APIError(429, str(exc), code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from exc
        task = asyncio.create_task(self._run(job.id, routed.plan, req))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return job, task

    async def _run(self, job_id: str, plan: Plan, request: GenerationRequest) -> None:
        try:
            await self._flow.run.remote(job_id, plan, request)
        except Exception as exc:
            log.exception("flow runner failed for %s", job_id)
            await self._tracker.finish.remote(job_id, JobStatus.FAILED, error=("flow_failed", str(exc)[:500]))

    async def _job(self, job_id: str, kind: str = "video") -> Job:
        job = await self._tracker.get.remote(job_id) if job_id.startswith(f"{kind}_") else None
        if job is None:
            raise APIError(404, f"no {kind} with id {job_id!r}", param=f"{kind}_id", code="not_found")
        return job

    def _asset(self, job: Job, name: str) -> Response:
        if job.status is not JobStatus.COMPLETED:
            raise APIError(409, f"{job.id} is {job.status.value}; content is ready once it is completed",
                           code="not_ready")
        key = job.assets.get(name)
        if key is None:
            raise APIError(404, f"{job.id} has no {name}", param="variant", code="not_found")
        path = self._storage.local_path(key)
        if path is not None:
            return FileResponse(path, media_type=ASSET_TYPES[name][1])
        return Response(self._storage.get(key), media_type=ASSET_TYPES[name][1])

    # --- /v1/videos ---------------------------------------------------------------------------------

    @api.post("/v1/videos", response_model=Video | VideoPlan)
    async def create_video(self, request: Request, dry_run: bool = False) -> JSONResponse:
        fields, raw = await read_body(request, self._max_bytes)
        try:
            body = VideoCreateRequest.model_validate(fields)
        except ValidationError as exc:
            raise from_validation_error(exc) from exc
        media = decode_media(media_from_fields(body, raw))
        params = body.model_dump(exclude=set(MEDIA_FIELDS))
        routed = route(self._config, Fields(**params), media)
        if dry_run:
            plan = VideoPlan(model=routed.variant.name, task=routed.request.task.value,
                             plan=routed.plan.model_dump(), **job_params(routed))
            return JSONResponse(plan.model_dump())
        job, _ = await self._submit("video", routed)
        return JSONResponse(to_video(job).model_dump(), headers=self._poll)

    @api.get("/v1/videos", response_model=VideoList)
    async def list_videos(
        self,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> VideoList:
        jobs, has_more = await self._tracker.list.remote("video", after, limit, order)
        data = [to_video(j) for j in jobs]
        return VideoList(data=data, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None, has_more=has_more)

    @api.get("/v1/videos/{video_id}", response_model=Video)
    async def get_video(self, video_id: str) -> JSONResponse:
        job = await self._job(video_id)
        return JSONResponse(to_video(job).model_dump(), headers=self._poll)

    @api.delete("/v1/videos/{video_id}", response_model=VideoDeleted)
    async def delete_video(self, video_id: str) -> VideoDeleted:
        """Cancel a queued or running job (it ends `cancelled` within one step); delete a finished one."""
        job = await self._job(video_id)
        if job.status.terminal:
            for key in job.assets.values():
                self._storage.delete(key)
            await self._tracker.delete.remote(video_id)
        else:
            await self._tracker.cancel.remote(video_id)
        return VideoDeleted(id=video_id)

    @api.get("/v1/videos/{video_id}/content")
    async def video_content(
        self, video_id: str, variant: Literal["video", "thumbnail", "spritesheet"] = "video"
    ) -> Response:
        return self._asset(await self._job(video_id), variant)

    # --- /v1/images ---------------------------------------------------------------------------------

    @api.post("/v1/images/generations", response_model=ImagesResponse)
    async def generate_images(self, request: Request, body: ImageGenerationRequest) -> ImagesResponse:
        params = body.model_dump(exclude={"n", "response_format", "quality", "style", "user"})
        fields = Fields(**params, task=Task.T2I, num_frames=1)
        first = route(self._config, fields, Media(), output="png")
        seed = first.request.seed  # n images take consecutive seeds, so the set is reproducible from one
        routed = [first] + [route(self._config, replace(fields, seed=seed + i), Media(), output="png")
                            for i in range(1, body.n)]
        submitted = [await self._submit("image", r) for r in routed]
        await asyncio.gather(*(task for _, task in submitted))
        data = []
        for job, _ in submitted:
            job = await self._job(job.id, "image")
            if job.status is not JobStatus.COMPLETED:
                raise APIError(500, f"image generation {job.status.value}: {job.error_message}", code=job.error_code)
            if body.response_format == "url":
                data.append(ImageData(url=f"{request.base_url}v1/images/{job.id}/content"))
            else:
                data.append(ImageData(b64_json=base64.b64encode(self._storage.get(job.assets["image"])).decode()))
        return ImagesResponse(created=int(time.time()), data=data)

    @api.get("/v1/images/{image_id}/content")
    async def image_content(self, image_id: str) -> Response:
        return self._asset(await self._job(image_id, "image"), "image")

    # --- models and health --------------------------------------------------------------------------

    @api.get("/v1/models", response_model=ModelList)
    async def list_models(self) -> ModelList:
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(serve.get_replica_context().app_name)
        deployments = app.deployments if app else {}
        cards = []
        for m in self._config.models:
            v = CATALOG[m.name]
            d = deployments.get(generator_name(m.name))
            cards.append(ModelCard(
                id=v.name, created=0, description=v.description, tasks=[t.value for t in v.tasks],
                default_for=[t.value for t in v.tasks if self._config.default_model(t) == v.name],
                fps=v.fps, sizes={k: f"{w}x{h}" for k, (w, h) in v.sizes.items()}, max_frames=v.max_frames,
                replicas={"status": d.status.value if d else "UNKNOWN",
                          "states": {str(k): n for k, n in d.replica_states.items()} if d else {}},
            ))
        return ModelList(data=cards)

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}
