"""What the router works on and hands back: a request's fields and decoded media, a video's length, the result.

Types only (and how a routed job is handed on), so that the router's stages (`router.py`, `presets.py`,
`planner.py`, `animate.py`) share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deployments.plan import FlowInputs, Plan, Submission
from domain.records import Job, JobKind, JobParams, JobType
from pipelines.conditioning import ResizePolicy
from pipelines.options import LoraChoice, Scheduler
from pipelines.variants import Task, Variant


@dataclass
class Media:
    """Decoded inputs: images HxWx3 uint8; the video and mask video FxHxWx3 uint8 with their frame rates;
    the source video's file, whose audio the combined output carries."""

    image: np.ndarray | None = None
    last_image: np.ndarray | None = None
    reference_image: np.ndarray | None = None
    video: np.ndarray | None = None
    video_fps: float = 16.0
    video_file: bytes | None = None
    mask: np.ndarray | None = None
    mask_fps: float = 16.0
    pose_video: np.ndarray | None = None  # Animate's driving videos, pre-processed
    pose_fps: float = 30.0
    face_video: np.ndarray | None = None
    face_fps: float = 30.0


@dataclass
class Fields:
    """The generation fields of the videos, images and batch endpoints."""

    prompt: str
    model: str | None = None
    task: Task | None = None
    size: str | None = None
    seconds: float | None = None
    num_frames: int | None = None
    fps: int | None = None
    negative_prompt: str | None = None  # None: the model's default; "": none
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    seed: int | None = None
    reference_mode: str | None = None
    denoise_strength: float | None = None
    reference_strength: float | None = None
    invert_mask: bool = False
    edit_mode: str = "inpaint"
    resize_policy: ResizePolicy = "center_crop"
    extensions: int | None = None
    overlap_frames: int | None = None
    target_fps: int | None = None
    interpolation_factor: int | None = None
    session_id: str | None = None
    webhook_url: str | None = None
    job_type: JobType | None = None
    preset: str | None = None  # the one resolved, once presets are applied
    scheduler: Scheduler | None = None
    loras: list[LoraChoice] | None = None  # None: the preset's; []: none
    enhance_prompt: bool = False


@dataclass
class Routed:
    variant: Variant
    plan: Plan
    inputs: FlowInputs
    params: JobParams  # what the client sees on the job

    def submission(self, kind: JobKind, job_id: str, fields: Fields, key_id: str | None) -> Submission:
        """The routed job as the flow runner takes it."""
        job = Job(id=job_id, kind=kind, model=self.variant.name, task=self.plan.task, prompt=fields.prompt,
                  plan=self.plan.model_dump(), params=self.params, session_id=fields.session_id,
                  webhook_url=fields.webhook_url, total_steps=self.plan.total_steps, key_id=key_id,
                  stage=self.plan.stages[0].kind)  # what it waits for; the flow runner records the later ones
        return Submission(job=job, plan=self.plan, inputs=self.inputs)


@dataclass(frozen=True)
class Frames:
    """A video job's length: `window`-frame generations, `extensions` after the first, `length` kept."""

    window: int
    extensions: int
    overlap: int
    length: int
