"""The wire: OpenAI's Videos, Images and Models formats plus Wan's extension fields, one model each.

Multipart bodies arrive with every field as a string (the `openai` SDK >= 2.27 always sends
multipart), so numeric fields are parsed in pydantic's lax mode: "5" is 5.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipelines.options import LoraChoice, Scheduler
from pipelines.request import MAX_LORAS, MAX_PROMPT_CHARS
from pipelines.variants import Task

NEGATIVE_PROMPT = "unset: the model's default (upstream Wan's); an empty string for none"
# Hard ceilings on what a body may hold; the config's `limits` (max_prompt_chars, max_metadata_keys, ...) rule below
# them, checked by `serve_app/limits.py`.
MAX_TEXT = MAX_PROMPT_CHARS
MAX_METADATA_KEYS = 256
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
VideoStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
ReferenceMode = Literal["none", "single", "start", "end", "both"]
JobTypeName = Literal["image_fast", "image_high", "video_fast", "video_high", "image_fast_enhanced",
                      "image_high_enhanced", "video_fast_enhanced", "video_high_enhanced"]


def _json_text(value: Any) -> Any:
    """Multipart carries structured fields as JSON text; JSON bodies carry them as they are."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError('must be a JSON list such as [{"name": "style", "scale": 0.8}]') from None
    return value


Loras = Annotated[list[LoraChoice], BeforeValidator(_json_text), Field(max_length=MAX_LORAS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Tuning(_Body):
    """The fields that pick a quality/time trade-off, shared by every generation endpoint."""

    job_type: JobTypeName | None = Field(None, description="quality against time by name: image_fast, image_high, "
                                         "video_fast, video_high (each a preset of the model); the *_enhanced forms "
                                         "add prompt enhancement")
    preset: str | None = Field(None, max_length=64, description="one of the model's presets by name (GET /v1/models)")
    scheduler: Scheduler | None = None
    loras: Loras | None = Field(None, description="selectable adapters for this job, each {name, scale}; in "
                                                  'multipart a JSON string. [] runs none, even where a preset has some')
    enhance_prompt: bool = Field(False, description="rewrite the prompt with the prompt enhancer first (as the "
                                                    "*_enhanced job types do); the job keeps both")


class _Tuned(BaseModel):
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


class VideoCreateRequest(_Tuning):
    """POST /v1/videos. Media fields hold data URLs in JSON; in multipart they are uploaded files."""

    prompt: Prompt
    model: str | None = None
    seconds: float | None = Field(None, gt=0, le=60)
    size: str | None = Field(None, description='"WxH" or a preset name such as "480p"')
    input_reference: str | Annotated[dict[str, str], Field(max_length=2)] | None = Field(
        None, description='an image: a data URL, an upload id or a URL; or {"image_url": ...} as the openai SDK sends')
    # Wan extensions
    task: Task | None = None
    negative_prompt: str | None = Field(None, max_length=MAX_TEXT, description=NEGATIVE_PROMPT)
    num_frames: int | None = Field(None, ge=1)
    fps: int | None = Field(None, ge=1, le=120, description="playback rate of the MP4; default: native")
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    seed: int | None = Field(None, ge=0)
    # inputs beyond input_reference: data URLs in JSON, files in multipart, or upload ids of the session
    last_image: str | None = None
    video: str | None = None
    mask: str | None = None
    reference_image: str | None = Field(None, description="VACE: a subject or style to keep")
    pose_video: str | None = Field(None, description="Animate: the driving pose, rendered as a skeleton video")
    face_video: str | None = Field(None, description="Animate: the driving face, as square face crops")
    reference_mode: ReferenceMode | None = Field(
        None, description="where the image(s) go: none; single or start (first frame); end (last frame); both")
    denoise_strength: float | None = Field(None, gt=0, le=1, description="video-to-video: how much to change")
    reference_strength: float | None = Field(None, ge=0, lt=1, description="legacy: 1 - denoise_strength")
    invert_mask: bool = Field(False, description="the mask video marks what to keep, not what to change")
    resize_policy: Literal["center_crop", "pad", "stretch"] = Field(
        "center_crop", description="how images (first, last, reference) fit the output size: cover and crop the "
                                   "centre, fit and pad with gray, or stretch; without `size`, the output takes the "
                                   "first image's aspect ratio")
    edit_mode: Literal["inpaint", "outpaint"] = Field(
        "inpaint", description="fit the source by cropping (inpaint) or pad it and generate the border (outpaint)")
    # multi-stage flows
    extensions: int | None = Field(None, ge=0, description="windows added after the first; default: none, or "
                                                          "enough to cover an uploaded clip")
    overlap_frames: int | None = Field(None, ge=1, description="frames each extension reuses; default 15")
    target_fps: int | None = Field(None, ge=1, le=120, description="interpolate up to this frame rate")
    interpolation_factor: int | None = Field(None, ge=2, le=8, description="or multiply the frame rate")
    session_id: str | None = None
    webhook_url: HttpUrl | None = Field(None, description="POSTed a signed event when the job ends")


def _json_object(value: Any) -> Any:
    """Multipart carries `context` as JSON text; JSON bodies carry it as an object."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError('must be a JSON object such as {"prefer_quality": true}') from None
    return value


PreferQuality = Annotated[bool | None, Field(description="true: the *_high job type; false: *_fast; unset: the "
                                                       "model's defaults")]
MaxDuration = Annotated[float | None, Field(gt=0, le=60, description="seconds; a longer ask is shortened")]


class RouteContext(_Body):
    """S3's form of the preferences, nested in `context`: the same as the top-level fields of the same names."""

    prefer_quality: PreferQuality = None
    max_duration: MaxDuration = None


class RouteRequest(_Body):
    """POST /v1/route: what to make, in words, with optional media and preferences (top-level, or in `context` as
    S3's routing API sent them)."""

    query: Prompt = Field(description='e.g. "Generate a video of a cat playing in the garden"')
    model: str | None = Field(None, description="a served model to use; unset: the one the query and inputs need")
    modality: Literal["text", "video", "image"] | None = Field(
        None, description="video or image: make that, whatever the words say; text (S3's form, the kind of input): "
                          "the query is words only, so the words decide, as when unset. The media sent still decide "
                          "the task")
    prefer_quality: PreferQuality = None
    max_duration: MaxDuration = None
    context: Annotated[RouteContext | None, BeforeValidator(_json_object)] = Field(
        None, description='S3\'s form of the preferences, e.g. {"prefer_quality": true, "max_duration": 10}; one that '
                          "says otherwise than the same top-level field is a 400")
    create: bool = Field(False, description="also create the job; else only say what would run")
    input_reference: str | None = None
    last_image: str | None = None
    video: str | None = None
    mask: str | None = None
    reference_image: str | None = None
    pose_video: str | None = None
    face_video: str | None = None
    session_id: str | None = None
    webhook_url: HttpUrl | None = None

    @field_validator("context")
    @classmethod
    def _agrees(cls, context: RouteContext | None, info: ValidationInfo) -> RouteContext | None:
        """A preference sent twice must say the same both times: which one to follow would be a guess."""
        for name, value in (context.model_dump(exclude_none=True) if context else {}).items():
            if info.data.get(name) not in (None, value):
                raise ValueError(f"context.{name} is {value!r} but the top-level {name} is {info.data[name]!r}; "
                                 "send one, or the same value in both")
        return context

    @model_validator(mode="after")
    def _from_context(self) -> RouteRequest:
        """The preferences in `context` are the top-level ones: the router reads only those."""
        for name, value in (self.context.model_dump(exclude_none=True) if self.context else {}).items():
            setattr(self, name, value)
        return self


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


class Video(_Tuned):
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


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoPlan(_Tuned):
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
    resize_policy: str | None = None
    plan: dict[str, Any]


class RouteAnswer(BaseModel):
    """How a query in words is classified and routed; with `create`, the job made."""

    object: Literal["route"] = "route"
    generation: bool = Field(description="false: the query asks for no video or image (see `answer`)")
    answer: str | None = None
    reason: str = Field(description="why this task and this model, in words")
    reading: Literal["enhancer", "keywords"] = Field(
        "keywords", description="what read the words: the prompt enhancer's model, or the keyword rules (no enhancer "
                                "configured, or its reading hit a bound or was not usable: `reason` says which)")
    task: str | None = None
    model: str | None = None
    fallback: dict[str, str] | None = Field(None, description="the model first chosen and why another serves")
    prompt: str | None = Field(None, description="what the model is asked for, from the query")
    size: str | None = None
    num_frames: int | None = None
    seconds: str | None = None
    fps: int | None = None
    num_inference_steps: int | None = None
    plan: dict[str, Any] | None = None
    video: Video | None = Field(None, description="the job, when `create` was set")


class _Deleted(BaseModel):
    """What a DELETE answers, as OpenAI's deletions do: the id, its object type, and `deleted`."""

    id: str
    deleted: bool = True


class VideoDeleted(_Deleted):
    object: Literal["video.deleted"] = "video.deleted"


class BatchDeleted(_Deleted):
    object: Literal["image.batch.deleted"] = "image.batch.deleted"


class ImageDeleted(_Deleted):
    object: Literal["image.deleted"] = "image.deleted"


class SessionDeleted(_Deleted):
    object: Literal["session.deleted"] = "session.deleted"


class ImageGenerationRequest(_Tuning):
    """POST /v1/images/generations: text-to-image as a one-frame T2V."""

    prompt: Prompt
    model: str | None = None
    n: int = Field(1, ge=1, le=4)
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    negative_prompt: str | None = Field(None, max_length=MAX_TEXT, description=NEGATIVE_PROMPT)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    flow_shift: float | None = None
    seed: int | None = Field(None, ge=0)


class ImageBatchRequest(_Tuning):
    """POST /v1/images/batches: up to 20 prompts as one job; each image by index, all as one ZIP."""

    prompts: list[Prompt] = Field(min_length=1, max_length=100, description="at most `limits.max_batch_prompts`")
    model: str | None = None
    size: str | None = None
    negative_prompt: str | None = Field(None, max_length=MAX_TEXT, description=NEGATIVE_PROMPT)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    flow_shift: float | None = None
    seed: int | None = Field(None, ge=0, description="image i uses seed + i")
    session_id: str | None = None
    webhook_url: HttpUrl | None = None


class ImageBatch(_Tuned):
    id: str
    object: Literal["image.batch"] = "image.batch"
    created_at: int
    completed_at: int | None
    expires_at: int | None = Field(None, description="when retention removes it; unset: kept until deleted")
    status: VideoStatus
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


class SessionCreateRequest(_Body):
    metadata: dict[str, str] = Field(default_factory=dict, max_length=MAX_METADATA_KEYS,
                                     description="at most `limits.max_metadata_keys` entries, each key and value "
                                                 "`limits.max_metadata_chars` long")


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


class Session(BaseModel):
    id: str
    object: Literal["session"] = "session"
    created_at: int
    metadata: dict[str, str]
    uploads: list[SessionUpload] = Field(default_factory=list)
    videos: list[Video] = Field(default_factory=list)
    image_batches: list[ImageBatch] = Field(default_factory=list)


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
