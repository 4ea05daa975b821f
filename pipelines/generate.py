"""One generation path per task: a checked request becomes pipeline kwargs, then frames.

Progress and cancellation ride on diffusers' per-step callback: `on_step(done, total)` is called after
every denoising step and returns False to stop, which raises `GenerationCancelled` before the VAE decode.

`WanEngine` is a loaded model with this path, as a generator replica runs it; `load_engine` makes one, and is the
generator deployment's default engine factory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from pipelines.conditioning import keyframes
from pipelines.loading import LoadedModel, load_model
from pipelines.lora import activate
from pipelines.options import Scheduler
from pipelines.request import GenerationCancelled, GenerationRequest, check_loras, check_request
from pipelines.variants import Task, Variant

StepCallback = Callable[[int, int], bool]


def _pil(array: np.ndarray, mode: str = "RGB") -> Image.Image:
    return Image.fromarray(array).convert(mode)


def pipeline_kwargs(req: GenerationRequest) -> dict[str, Any]:
    """Translate a checked request into the keyword arguments of its task's diffusers pipeline."""
    kwargs: dict[str, Any] = dict(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt or None,
        height=req.height,
        width=req.width,
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(req.seed),
        output_type="np",
    )
    if req.guidance_scale_2 is not None:
        kwargs["guidance_scale_2"] = req.guidance_scale_2
    match req.task:
        case Task.T2V | Task.T2I:
            kwargs["num_frames"] = req.num_frames
        case Task.I2V | Task.FLF2V:
            kwargs["num_frames"] = req.num_frames
            kwargs["image"] = _pil(req.image)
            if req.last_image is not None:
                kwargs["last_image"] = _pil(req.last_image)
        case Task.V2V:
            kwargs["video"] = [_pil(f) for f in req.video]
            kwargs["strength"] = req.denoise_strength
        case Task.VACE:
            kwargs["num_frames"] = req.num_frames
            video, mask = req.video, req.mask
            if video is None:  # keyframes: keep the first and/or last frame, generate the rest
                video, mask = keyframes(req.num_frames, req.width, req.height, req.image, req.last_image)
            kwargs["video"] = [_pil(f) for f in video]
            if mask is not None:
                kwargs["mask"] = [_pil(m, "L") for m in mask]
            if req.reference_images:
                kwargs["reference_images"] = [_pil(r) for r in req.reference_images]
        case Task.ANIMATE:  # one segment as long as the output, so the step callback counts the job's steps
            kwargs |= dict(image=_pil(req.image), pose_video=[_pil(f) for f in req.pose_video],
                           face_video=[_pil(f) for f in req.face_video], segment_frame_length=req.num_frames)
            if req.video is not None:
                kwargs |= dict(mode="replace", background_video=[_pil(f) for f in req.video],
                               mask_video=[_pil(m, "L") for m in req.mask])
    return kwargs


def make_scheduler(name: Scheduler, config: Any, flow_shift: float) -> SchedulerMixin:
    """A fresh scheduler per call, from the checkpoint's config: schedulers keep per-run state, and the kind and
    flow_shift are request parameters. UniPC is Wan's own; Euler is what step-distilled (Lightning) LoRAs use."""
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=flow_shift)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, flow_shift=flow_shift, use_flow_sigmas=True,
                                                       prediction_type="flow_prediction")
    return UniPCMultistepScheduler.from_config(config, flow_shift=flow_shift)


def generate(model: LoadedModel, req: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
    """Run `req` and return its frames as an FxHxWx3 uint8 array. Same seed and inputs, same frames."""
    check_request(model.variant, req)
    check_loras(model.variant.name, model.adapters, req.loras)
    pipe = model.pipeline_for(req.task)
    pipe.scheduler = make_scheduler(req.scheduler, model.scheduler_config, req.flow_shift)

    def step_end(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None and not on_step(step + 1, p.num_timesteps):
            raise GenerationCancelled(f"cancelled after step {step + 1} of {p.num_timesteps}")
        return tensors

    try:
        with torch.inference_mode(), activate(model.pipeline, model.adapters, req.loras):
            frames = pipe(**pipeline_kwargs(req), callback_on_step_end=step_end).frames[0]
    finally:
        model.free_offloaded()
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


@dataclass(frozen=True)
class WanEngine:
    """A loaded model and its generation path: what a generator replica runs."""

    model: LoadedModel

    @property
    def device(self) -> torch.device:
        return self.model.device

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> np.ndarray:
        return generate(self.model, request, on_step)

    def reset_peak_memory(self) -> None:
        self.model.reset_peak_memory()

    def peak_memory_mb(self) -> float | None:
        return self.model.peak_memory_mb()


def load_engine(variant: Variant, weights: str | None = None, **options: Any) -> WanEngine:
    """The engine of `variant`, loaded once; `options` are `load_model`'s (dtype, device, offload, adapters, ...)."""
    return WanEngine(load_model(variant, weights, **options))
