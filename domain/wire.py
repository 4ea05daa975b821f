"""The wire objects of a job, as clients see them on GET, in an event stream and in a webhook alike.

Here, below both the deployments and the ingress, because a deployment builds a webhook event from the same view
the ingress answers with. The request bodies, and the responses no deployment builds, are `serve_app/schemas.py`'s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from domain.records import JobStatus
from pipelines.options import LoraChoice


class Tuned(BaseModel):
    """What a job ran with, beyond the sampling parameters: its job type, preset and adapters."""

    job_type: str | None = None
    preset: str | None = None
    loras: list[LoraChoice] = Field(default_factory=list, description="the selectable adapters it ran with")
    enhanced_prompt: str | None = Field(None, description="what the enhancer wrote, which the model was given")
    enhancement_source: str = Field("none", description="the enhancer's model, or none")
    enhancement_seconds: float | None = None
    enhancement_error: str | None = Field(None, description="why the prompt as sent was used after all")
    reference_mode: str | None = Field(None, description="where the images went, as the request said")
    processing_time: float | None = Field(None, description="seconds from the first denoising step to the end")
    gpu_memory_peak_mb: int | None = Field(None, description="the generator's peak GPU memory; none off a GPU")


class VideoError(BaseModel):
    code: str
    message: str


class Asset(BaseModel):
    """One deliverable of a job, fetchable at `url` (this service, or the bucket once uploaded)."""

    name: str
    type: Literal["video", "image", "thumbnail", "archive"]
    url: str
    thumbnail_url: str | None
    width: int | None
    height: int | None
    frames: int | None
    fps: float | None
    duration: float | None
    format: str
    file_size_bytes: int
    # what made it (S2's callback metadata), the same on every asset of a job
    asset_index: int = Field(0, description="its position in the job's assets")
    task: str | None = Field(None, description="the pipeline task that made it: t2v, i2v, vace, animate, ...")
    resize_policy: str | None = Field(None, description="how the input images were fitted; none without images")
    negative_prompt_used: bool = False
    denoise_strength: float | None = Field(None, description="video-to-video only")


class UploadStatus(BaseModel):
    status: Literal["completed", "failed"]
    error: str | None = None


class Video(Tuned):
    """The OpenAI video object, with Wan's generation parameters alongside."""

    id: str
    object: Literal["video"] = "video"
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    status: JobStatus
    progress: int
    model: str
    prompt: str | None
    seconds: str
    size: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    # Wan extensions
    task: str
    num_frames: int
    fps: int
    seed: int
    num_inference_steps: int
    resize_policy: str | None = Field(None, description="how the input images were fitted; none without images")
    step: int
    total_steps: int
    stage: str | None = Field(description="the plan stage running now (generate, encode, ...); `starting` while "
                                          "queued for a model with no running replica (scaled to zero)")
    stage_detail: str | None = Field(None, description="why a queued job waits, in words, e.g. 'model tiny-t2v is "
                                                       "starting (0 replicas running, 1 starting)'")
    queue_position: int | None = Field(None, description="1: next to start on its model; set while queued")
    session_id: str | None
    plan: dict[str, Any]
    assets: list[Asset]
    upload: UploadStatus | None = Field(None, description="the object-store copy, when one is configured")
    webhook: dict[str, Any] | None = Field(None, description="the webhook delivery, once attempted")


class ImageBatch(Tuned):
    id: str
    object: Literal["image.batch"] = "image.batch"
    created_at: int
    completed_at: int | None
    expires_at: int | None = Field(None, description="when retention removes it; unset: kept until deleted")
    status: JobStatus
    progress: int
    model: str
    prompts: list[str]
    size: str
    seed: int
    session_id: str | None
    error: VideoError | None
    plan: dict[str, Any]
    assets: list[Asset]
    upload: UploadStatus | None = None
    webhook: dict[str, Any] | None = None


class SessionUpload(BaseModel):
    """A file uploaded into a session: refer to it by `id` in a video's media fields."""

    id: str
    object: Literal["session.upload"] = "session.upload"
    session_id: str
    kind: Literal["video", "image"]
    filename: str
    content_type: str
    size_bytes: int
    created_at: int
    info: dict[str, Any]
