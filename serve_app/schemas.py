"""The wire: OpenAI's Videos, Images and Models formats plus Wan's extension fields, one model each.

Multipart bodies arrive with every field as a string (the `openai` SDK >= 2.27 always sends
multipart), so numeric fields are parsed in pydantic's lax mode: "5" is 5.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.variants import Task

VideoStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VideoCreateRequest(_Body):
    """POST /v1/videos. Media fields hold data URLs in JSON; in multipart they are uploaded files."""

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    seconds: float | None = Field(None, gt=0, le=60)
    size: str | None = Field(None, description='"WxH" or a preset name such as "480p"')
    input_reference: str | dict[str, str] | None = None
    # Wan extensions
    task: Task | None = None
    negative_prompt: str = Field("", max_length=4000)
    num_frames: int | None = Field(None, ge=1)
    fps: int | None = Field(None, ge=1, le=120, description="playback rate of the MP4; default: native")
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    seed: int | None = Field(None, ge=0)
    strength: float | None = Field(None, gt=0, le=1, description="video-to-video: how much to change")
    last_image: str | None = None
    video: str | None = None
    mask: str | None = None


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """The OpenAI video object, with Wan's generation parameters alongside."""

    id: str
    object: Literal["video"] = "video"
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    status: VideoStatus
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
    step: int
    plan: dict[str, Any]


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoPlan(BaseModel):
    """POST /v1/videos?dry_run=true: what would run, with every default resolved; nothing is queued."""

    object: Literal["video.plan"] = "video.plan"
    model: str
    task: str
    size: str
    num_frames: int
    seconds: str
    fps: int
    seed: int
    num_inference_steps: int
    plan: dict[str, Any]


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class ImageGenerationRequest(_Body):
    """POST /v1/images/generations: text-to-image as a one-frame T2V."""

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    n: int = Field(1, ge=1, le=4)
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    negative_prompt: str = Field("", max_length=4000)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    flow_shift: float | None = None
    seed: int | None = Field(None, ge=0)


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "wan-serve"
    description: str
    tasks: list[str]
    default_for: list[str]
    fps: int
    sizes: dict[str, str]
    max_frames: int
    replicas: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
