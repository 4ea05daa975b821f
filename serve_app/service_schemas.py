"""The wire of the service's own state: the served models (`GET /v1/models`), the queue (`GET /v1/queue`), and a
job's progress as its SSE events carry it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ABSENT = {"Wan2.2-S2V-14B": "speech-to-video has no pipeline in any released diffusers (an open pull request "
                            "only), and wan-serve runs Wan through diffusers"}


class AdapterCard(BaseModel):
    name: str
    fused: bool = Field(description="fused at load, on for every job; else selectable with `loras` and presets")
    scales: dict[str, float] = Field(description="each expert's scale (transformer_2: Wan 2.2's low-noise expert)")


class ScalingCard(BaseModel):
    """How many generator replicas a model runs: fixed, or autoscaled between bounds."""

    min_replicas: int = Field(description="0: the model scales to zero and holds no replica (no GPU) while idle")
    max_replicas: int
    scales_to_zero: bool = Field(description="the first job after an idle spell waits `queued`, stage `starting`, "
                                             "while a replica starts")
    running: int = Field(description="replicas running now")
    summary: str = Field(description="the replicas now in words, e.g. '0 running: starts on the first job'")


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
    gpus: float = Field(description="GPUs per replica; a fraction packs several replicas on one card")
    gpu_memory_fraction: float | None = Field(description="each replica's cap on its card's memory")
    replicas: dict[str, Any] = Field(description="the generator deployment's status, replicas by state, and "
                                                 "Serve's message (why replicas are pending, for one)")
    scaling: ScalingCard
    adapters: list[AdapterCard] = Field(default_factory=list)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="what each preset sets")
    job_types: dict[str, str] = Field(default_factory=dict, description="the preset each job type runs")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    absent: dict[str, str] = Field(default_factory=lambda: dict(ABSENT), description="Wan models no configuration "
                                                                                    "can serve, and why")


class QueueEntry(BaseModel):
    model: str
    queued: int = Field(description="accepted, waiting for a replica")
    in_progress: int
    max_queued_jobs: int = Field(description="queued + running before a create is answered 429")
    replicas: dict[str, int] = Field(description="the generator's replicas by state")


class Queue(BaseModel):
    object: Literal["queue"] = "queue"
    data: list[QueueEntry]


class JobProgress(BaseModel):
    """The data of a `video.progress` / `batch.progress` event (`GET .../events`)."""

    id: str
    status: Literal["queued", "in_progress"]
    progress: int = Field(description="percent of the denoising steps done")
    step: int = Field(description="denoising steps done, over every generation of the job's plan")
    total_steps: int
    stage: str | None = Field(None, description="the plan stage running now: generate, interpolate, encode, ...; "
                                                "`starting` while queued for a model with no running replica")
    stage_detail: str | None = Field(None, description="why a queued job waits, in words (its model starting)")
    queue_position: int | None = Field(None, description="1: the next of its model's queued jobs to start")
