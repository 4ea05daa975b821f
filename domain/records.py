"""The records the job store keeps: jobs (with their typed parameters), sessions and uploads, and what a create's
Idempotency-Key carries; the enums that name a job's kind, status and type.

States: queued -> in_progress -> completed | failed | cancelled. Ended states are final, so a late
report from a stage can never bring a finished job back to life.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in ENDED


ACTIVE = (JobStatus.QUEUED, JobStatus.IN_PROGRESS)
ENDED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


def new_id(prefix: str) -> str:
    """The one place an id is minted (a job's, by its kind's prefix; a session's, an upload's): 128 random bits."""
    return f"{prefix}_{uuid.uuid4().hex}"


class JobKind(StrEnum):
    """What a job makes, which names its endpoints and the prefix of its id."""

    VIDEO = "video"
    IMAGE = "image"  # one image of POST /v1/images/generations
    BATCH = "batch"  # POST /v1/images/batches: one job, an image per prompt

    @property
    def id_prefix(self) -> str:
        return "img" if self is JobKind.IMAGE else self.value

    def new_id(self) -> str:
        return new_id(self.id_prefix)

    def owns(self, job_id: str) -> bool:
        return job_id.startswith(f"{self.id_prefix}_")


class JobType(StrEnum):
    """A named trade-off of quality against time (a preset of the model); *_ENHANCED ones rewrite the prompt first."""

    IMAGE_FAST = "image_fast"
    IMAGE_HIGH = "image_high"
    VIDEO_FAST = "video_fast"
    VIDEO_HIGH = "video_high"
    IMAGE_FAST_ENHANCED = "image_fast_enhanced"
    IMAGE_HIGH_ENHANCED = "image_high_enhanced"
    VIDEO_FAST_ENHANCED = "video_fast_enhanced"
    VIDEO_HIGH_ENHANCED = "video_high_enhanced"

    @property
    def enhanced(self) -> bool:
        return self.value.endswith("_enhanced")

    @property
    def image(self) -> bool:
        return self.value.startswith("image_")

    @property
    def base(self) -> str:
        """The plain type a preset is configured under: video_fast for video_fast_enhanced."""
        return self.value.removesuffix("_enhanced")


@dataclass(frozen=True, kw_only=True)
class JobParams:
    """What a job was asked for, with every default resolved: written once by the router, read by attribute by the
    views, the route answer and the dry run. Kept JSON-able (plain values), since the job store keeps it as JSON."""

    size: str  # "WxH"
    seed: int  # the first generation's; image i of a batch uses seed + i
    num_inference_steps: int
    negative_prompt_used: bool = False
    job_type: str | None = None
    preset: str | None = None  # the one resolved from the job type, or named
    loras: list[dict[str, Any]] = field(default_factory=list)  # the selectable adapters: {name, scale}
    # a video (or one image)
    num_frames: int = 1
    fps: int = 16
    seconds: str = "0"
    resize_policy: str | None = None  # how input images were fitted; None without images
    reference_mode: str | None = None
    denoise_strength: float | None = None  # video-to-video only
    # a batch
    prompts: list[str] = field(default_factory=list)


@dataclass
class Job:
    """One accepted request and everything known about it; `plan` is the Plan as a JSON-able dict."""

    id: str
    kind: JobKind
    model: str
    task: str
    prompt: str
    params: JobParams
    plan: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    session_id: str | None = None
    webhook_url: str | None = None
    owner: str | None = None  # the flow runner replica (a Ray actor) that created and runs the job
    key_id: str | None = None  # the API key that made it (its digest's prefix, never the key); None: open mode
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    stage: str | None = None  # the plan stage running now (or, queued, the one it waits for)
    step: int = 0  # denoising steps done, across every generation of the plan
    total_steps: int = 0
    segment_steps: dict[str, int] = field(default_factory=dict)  # steps done per generation
    progress: int = 0
    cancel_requested: bool = False
    cancel_step: int | None = None  # the step the job had reached when cancellation was asked for
    delete_requested: bool = False  # DELETE while it ran: gone for clients now, removed once it has stopped
    error_code: str | None = None
    error_message: str | None = None
    assets: list[dict[str, Any]] = field(default_factory=list)  # deployments/assets.py:Asset records
    upload: dict[str, Any] | None = None  # the object-store upload: status, error
    webhook: dict[str, Any] | None = None  # the webhook delivery: delivered, attempts, status_code, error
    expires_at: float | None = None  # when retention will remove it (set as it ends); None: kept until deleted
    enhancement: dict[str, Any] | None = None  # the prompt enhancer's answer: prompt, source, seconds, error
    gpu_memory_peak_mb: int | None = None  # the most GPU memory one of its generations took; None off a GPU
    version: int = 0  # +1 on every change: the id of the SSE event that carries it (Last-Event-ID resumes there)


@dataclass
class Session:
    """A workspace: uploads go in, jobs refer to them, and their outputs are stored under it."""

    id: str
    created_at: float = field(default_factory=time.time)
    metadata: dict[str, str] = field(default_factory=dict)
    key_id: str | None = None
    deleting: bool = False  # DELETE began: gone for clients, its jobs and uploads are being removed


@dataclass(frozen=True)
class Idempotency:
    """A create's `Idempotency-Key` and its body's fingerprint: a retry of the same body gets the same jobs."""

    key: str
    fingerprint: str


@dataclass
class Upload:
    """A file uploaded into a session, normalised (video: MP4, image: RGB JPEG) and stored at `key`."""

    id: str
    session_id: str
    kind: str  # "video" or "image"
    filename: str
    key: str
    content_type: str
    size_bytes: int
    info: dict[str, Any] = field(default_factory=dict)  # width, height, frames, fps, duration_s, has_audio
    created_at: float = field(default_factory=time.time)
    key_id: str | None = None
