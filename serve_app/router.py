"""Request classification: validated fields and decoded media become a task, a model and a Plan.

Deterministic from the inputs (video + mask -> vace, video -> v2v, image + last image -> flf2v,
image -> i2v, one frame -> t2i, text -> t2v), with an explicit `task` or `model` taking precedence and a
400 naming the field when a model cannot do the task.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.plan import Plan, Stage
from pipelines.request import GenerationRequest, InvalidRequest, check_frames, check_request, check_size
from pipelines.variants import CATALOG, Family, Task, Variant
from serve_app.config import AppConfig
from serve_app.errors import APIError

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


@dataclass
class Media:
    """Decoded uploads: images HxWx3 uint8, video FxHxWx3 uint8, mask FxHxW uint8."""

    image: np.ndarray | None = None
    last_image: np.ndarray | None = None
    video: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class Fields:
    """The generation fields common to the videos and images endpoints."""

    prompt: str
    model: str | None = None
    task: Task | None = None
    size: str | None = None
    seconds: float | None = None
    num_frames: int | None = None
    fps: int | None = None
    negative_prompt: str = ""
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    seed: int | None = None
    strength: float | None = None


@dataclass
class Routed:
    variant: Variant
    request: GenerationRequest
    plan: Plan
    fps: int


def infer_task(fields: Fields, media: Media, variant: Variant | None) -> Task:
    if fields.task is not None:
        return fields.task
    if media.video is not None:
        vace = media.mask is not None or (variant is not None and variant.family is Family.VACE)
        return Task.VACE if vace else Task.V2V
    if media.image is not None:
        return Task.FLF2V if media.last_image is not None else Task.I2V
    if media.last_image is not None:
        raise APIError(400, "last_image needs a first frame in input_reference", param="input_reference")
    return Task.T2I if fields.num_frames == 1 else Task.T2V


def choose_variant(config: AppConfig, fields: Fields, media: Media) -> tuple[Variant, Task]:
    if fields.model is not None:
        if config.model(fields.model) is None:
            served = ", ".join(m.name for m in config.models)
            raise APIError(400, f"model {fields.model!r} is not served here; served: {served}",
                           param="model", code="model_not_found")
        variant = CATALOG[fields.model]
        task = infer_task(fields, media, variant)
        if task not in variant.tasks:
            does = ", ".join(t.value for t in variant.tasks)
            missing = None if fields.task else _missing_input(variant)
            if missing is not None:
                raise APIError(400, f"{variant.name} does {does}: send {missing}", param=missing,
                               code="missing_input")
            raise APIError(400, f"{variant.name} cannot do {task.value}; it does: {does}", param="model",
                           code="unsupported_task")
        return variant, task
    task = infer_task(fields, media, None)
    name = config.default_model(task)
    if name is None:
        raise APIError(400, f"no served model does {task.value}", param="model", code="unsupported_task")
    return CATALOG[name], task


def _missing_input(variant: Variant) -> str | None:
    """The input every task of `variant` needs, when a request named the model but left it out."""
    if all(t in (Task.I2V, Task.FLF2V) for t in variant.tasks):
        return "input_reference"
    if all(t in (Task.V2V, Task.VACE) for t in variant.tasks):
        return "video"
    return None


def parse_size(variant: Variant, size: str | None) -> tuple[int, int]:
    if size is None:
        return variant.sizes[variant.default_size]
    if size in variant.sizes:
        return variant.sizes[size]
    match = _SIZE.match(size.strip())
    if match is None:
        raise APIError(400, f"size {size!r} is neither WxH nor a preset of {variant.name} "
                            f"({', '.join(variant.sizes)})", param="size", code="invalid_size")
    width, height = int(match[1]), int(match[2])
    _checked(check_size, variant, width, height)
    return width, height


def num_frames(variant: Variant, task: Task, fields: Fields, media: Media) -> int:
    if task is Task.T2I:
        return 1
    if media.video is not None and task is Task.V2V:
        return len(media.video)
    if fields.num_frames is not None:
        frames, param = fields.num_frames, "num_frames"
    elif fields.seconds is not None:
        frames, param = variant.frames_for_seconds(fields.seconds), "seconds"
    elif media.video is not None:
        return len(media.video)
    else:
        return variant.default_frames
    _checked(check_frames, variant, frames, param)
    return frames


def route(config: AppConfig, fields: Fields, media: Media, *, output: str = "mp4") -> Routed:
    """Classify, resolve defaults against the chosen variant, check, and plan."""
    variant, task = choose_variant(config, fields, media)
    width, height = parse_size(variant, fields.size)
    request = GenerationRequest(
        task=task,
        prompt=fields.prompt,
        negative_prompt=fields.negative_prompt,
        width=width,
        height=height,
        num_frames=num_frames(variant, task, fields, media),
        num_inference_steps=fields.num_inference_steps or variant.steps,
        guidance_scale=variant.guidance_scale if fields.guidance_scale is None else fields.guidance_scale,
        guidance_scale_2=fields.guidance_scale_2 if fields.guidance_scale_2 is not None else variant.guidance_scale_2,
        flow_shift=fields.flow_shift or variant.flow_shift,
        seed=secrets.randbelow(2**31) if fields.seed is None else fields.seed,
        strength=fields.strength or 0.8,
        image=media.image,
        last_image=media.last_image,
        video=media.video,
        mask=media.mask,
    )
    _checked(check_request, variant, request)
    fps = fields.fps or variant.fps
    plan = Plan(task=task.value, model=variant.name, stages=[
        Stage(kind="generate", deployment=generator_name(variant.name), params={
            "model": variant.name, "size": f"{width}x{height}", "num_frames": request.num_frames,
            "num_inference_steps": request.num_inference_steps, "seed": request.seed,
        }),
        Stage(kind="encode", deployment="VideoEncoder",
              params={"format": "png"} if output == "png" else {"format": "mp4", "fps": fps}),
        Stage(kind="store", deployment="FlowRunner"),
    ])
    return Routed(variant=variant, request=request, plan=plan, fps=fps)


def generator_name(model: str) -> str:
    """The generator deployment's name for a variant: Ray names allow no dots."""
    return "Generator-" + re.sub(r"[^A-Za-z0-9_-]", "_", model)


def _checked(check: Callable[..., None], *args: Any) -> None:
    try:
        check(*args)
    except InvalidRequest as exc:
        raise APIError(400, exc.message, param=exc.param, code="invalid_value") from exc
