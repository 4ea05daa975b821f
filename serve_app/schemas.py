"""The wire: OpenAI's Videos, Images and Models formats plus Wan's extension fields, one model each.

Multipart bodies arrive with every field as a string (the `openai` SDK >= 2.27 always sends
multipart), so numeric fields are parsed in pydantic's lax mode: "5" is 5.
"""

from __future__ import annotations

import json
from enum import StrEnum
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

from domain.records import JobType
from domain.wire import ImageBatch, SessionUpload, Tuned, Video
from pipelines.options import LoraChoice, Scheduler
from pipelines.request import MAX_LORAS, MAX_PROMPT_CHARS
from pipelines.variants import Task
from serve_app.fields import Fields

NEGATIVE_PROMPT = "unset: the model's default (upstream Wan's); an empty string for none"
# Hard ceilings on what a body may hold; the config's `limits` (max_prompt_chars, max_metadata_keys, ...) rule below
# them, checked by `serve_app/limits.py`.
MAX_TEXT = MAX_PROMPT_CHARS
MAX_METADATA_KEYS = 256
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
ReferenceMode = Literal["none", "single", "start", "end", "both"]


class MediaField(StrEnum):
    """The fields that carry media: data URLs, URLs or upload ids in JSON, files in multipart."""

    INPUT_REFERENCE = "input_reference"
    LAST_IMAGE = "last_image"
    VIDEO = "video"
    MASK = "mask"
    REFERENCE_IMAGE = "reference_image"
    POSE_VIDEO = "pose_video"
    FACE_VIDEO = "face_video"


MEDIA_FIELDS = tuple(f.value for f in MediaField)


def _json_text(example: str) -> BeforeValidator:
    """Multipart carries structured fields as JSON text, JSON bodies as they are: text is parsed, and text that is no
    JSON is refused with an `example` of what the field takes."""

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"must be {example}") from None
        return value

    return BeforeValidator(parse)


Loras = Annotated[list[LoraChoice], _json_text('a JSON list such as [{"name": "style", "scale": 0.8}]'),
                  Field(max_length=MAX_LORAS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Tuning(_Body):
    """The fields that pick a quality/time trade-off, shared by every generation endpoint."""

    job_type: JobType | None = Field(None, description="quality against time by name: image_fast, image_high, "
                                         "video_fast, video_high (each a preset of the model); the *_enhanced forms "
                                         "add prompt enhancement")
    preset: str | None = Field(None, max_length=64, description="one of the model's presets by name (GET /v1/models)")
    scheduler: Scheduler | None = None
    loras: Loras | None = Field(None, description="selectable adapters for this job, each {name, scale}; in "
                                                  'multipart a JSON string. [] runs none, even where a preset has some')
    enhance_prompt: bool = Field(False, description="rewrite the prompt with the prompt enhancer first (as the "
                                                    "*_enhanced job types do); the job keeps both")


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

    def to_fields(self) -> Fields:
        """The router's input: every field but the media, which the gateway decodes first."""
        return _fields(self, set(MEDIA_FIELDS), webhook_url=self.webhook_url)


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
    context: Annotated[RouteContext | None, _json_text('a JSON object such as {"prefer_quality": true}')] = Field(
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

    @field_validator("query")
    @classmethod
    def _has_words(cls, query: str) -> str:
        """A query of spaces and control characters alone says nothing to read."""
        if not query.split():
            raise ValueError("the query has no words: say what to make, e.g. 'a video of a cat in a garden'")
        return query

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


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoPlan(Tuned):
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

    def to_fields(self) -> Fields:
        """One image is text to image in one frame; `n`, `response_format` and OpenAI's fields this service does not
        use (quality, style, user) are the endpoint's, not the router's."""
        return _fields(self, {"n", "response_format", "quality", "style", "user"}, task=Task.T2I, num_frames=1)


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

    def to_fields(self) -> Fields:
        """The router's input, with the first prompt as the job's prompt (`route_batch` takes them all)."""
        return _fields(self, {"prompts"}, prompt=self.prompts[0], webhook_url=self.webhook_url)


def _fields(body: _Tuning, exclude: set[str], webhook_url: HttpUrl | None = None, **given: Any) -> Fields:
    """A request as the router's input, less the fields in `exclude`: adapters kept as choices, the webhook as text.
    A request field that `Fields` lacks, and is not excluded, is a TypeError: nothing a client sends is dropped
    unread."""
    return Fields(**body.model_dump(exclude={*exclude, "loras", "webhook_url"}), loras=body.loras,
                  webhook_url=str(webhook_url) if webhook_url else None, **given)


class SessionCreateRequest(_Body):
    metadata: dict[str, str] = Field(default_factory=dict, max_length=MAX_METADATA_KEYS,
                                     description="at most `limits.max_metadata_keys` entries, each key and value "
                                                 "`limits.max_metadata_chars` long")


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
