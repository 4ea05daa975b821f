"""The records the job store keeps: jobs, sessions and uploads, and what a create's Idempotency-Key carries.

States: queued -> in_progress -> completed | failed | cancelled. Terminal states are final, so a late
report from a stage can never bring a finished job back to life.
"""

from __future__ import annotations

import time
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
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class Job:
    """One accepted request and everything known about it; `params` and `plan` are JSON-able dicts."""

    id: str
    kind: str  # "video", "image" or "batch"
    model: str
    task: str
    prompt: str
    params: dict[str, Any]
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


class KeyReused(Exception):
    """The `Idempotency-Key` was already used, by this API key, with another body."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message  # read through Ray's wrapper, whose str() is a traceback


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
