"""Job records as clients see them: one function per wire object, used by the API and the webhook event alike."""

from __future__ import annotations

import time
from typing import Any, Protocol

from domain.records import Job, JobKind, Upload
from domain.wire import ImageBatch, SessionUpload, Video, VideoError


class Links(Protocol):
    """Where clients fetch a job's assets (`deployments/assets.py:AssetLinks`: the bucket, or this service)."""

    def views(self, kind: str, job_id: str, records: list[dict[str, Any]], base: str) -> list[dict[str, Any]]: ...


def _error(job: Job) -> VideoError | None:
    return VideoError(code=job.error_code, message=job.error_message or "") if job.error_code else None


def job_view(job: Job, links: Links, base: str) -> Video | ImageBatch:
    """A job as its wire object: an image batch, or a video (a one-frame one for an image); asset URLs under
    `base` until they are in the bucket."""
    p = job.params
    made = dict(task=job.task, resize_policy=p.resize_policy, denoise_strength=p.denoise_strength,
                negative_prompt_used=p.negative_prompt_used)  # on every asset, as S2's callbacks
    enhanced = job.enhancement or {}
    common: dict[str, Any] = dict(
        id=job.id, created_at=int(job.created_at), completed_at=int(job.completed_at) if job.completed_at else None,
        expires_at=int(job.expires_at) if job.expires_at else None,
        status=job.status, progress=job.progress, model=job.model, size=p.size, seed=p.seed,
        session_id=job.session_id, error=_error(job), plan=job.plan, upload=job.upload, webhook=job.webhook,
        assets=[a | made | {"asset_index": i} for i, a in enumerate(links.views(job.kind, job.id, job.assets, base))],
        job_type=p.job_type, preset=p.preset, loras=p.loras,
        enhanced_prompt=(enhanced.get("prompts") or [None])[0], enhancement_source=enhanced.get("source", "none"),
        enhancement_seconds=enhanced.get("seconds"), enhancement_error=enhanced.get("error"),
        reference_mode=p.reference_mode, gpu_memory_peak_mb=job.gpu_memory_peak_mb,
        processing_time=round(job.completed_at - job.started_at, 3) if job.completed_at and job.started_at else None,
    )
    if job.kind == JobKind.BATCH:
        return ImageBatch(**common, prompts=p.prompts)
    return Video(
        **common, prompt=job.prompt, seconds=p.seconds, task=job.task, num_frames=p.num_frames, fps=p.fps,
        num_inference_steps=p.num_inference_steps, resize_policy=p.resize_policy, step=job.step,
        total_steps=job.total_steps, stage=job.stage,
    )


def job_event(job: Job, links: Links, base: str) -> dict[str, Any]:
    """The webhook event of an ended job, shaped like OpenAI's webhook events, with the job's wire view."""
    # One id per job and outcome: it is the webhook-id receivers de-duplicate on, across retries.
    return {"id": f"evt_{job.id}_{job.status.value}", "object": "event", "type": f"{job.kind}.{job.status.value}",
            "created_at": int(time.time()), "data": job_view(job, links, base).model_dump(mode="json")}


def upload_view(upload: Upload) -> SessionUpload:
    return SessionUpload(id=upload.id, session_id=upload.session_id, kind=upload.kind, filename=upload.filename,
                         content_type=upload.content_type, size_bytes=upload.size_bytes,
                         created_at=int(upload.created_at), info=upload.info)
