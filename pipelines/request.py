"""A generation request, fully resolved, and the one place its arguments are checked against a variant.

Torch-free on purpose: the HTTP ingress checks requests with this module before it accepts a job, and
the generator checks them again before it runs one, with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args

import numpy as np

from pipelines.options import LoraSpec, Scheduler
from pipelines.variants import Task, Variant

MAX_STEPS = 200
MAX_PROMPT_CHARS = 32_000  # a ceiling for any caller; the service's configured limit is lower
MAX_REFERENCE_IMAGES = 3
MAX_LORAS = 8


class InvalidRequest(ValueError):
    """A request that cannot be served: `param` names the offending field, `code` says what is wrong with it.

    The domain's one validation error: the router and the generator raise it, the HTTP layer maps it to a 400.
    """

    def __init__(self, param: str | None, message: str, code: str = "invalid_value") -> None:
        super().__init__(param, message, code)  # all in args, so it survives pickling between Ray processes
        self.param = param
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class GenerationCancelled(Exception):
    """Raised inside the denoising loop when the caller asks to stop."""


@dataclass(frozen=True)
class LoraUse:
    """A selectable adapter a job runs with; `scale` multiplies the scales the model's config gives it."""

    name: str
    scale: float = 1.0


@dataclass
class GenerationRequest:
    """Everything one generation needs, with defaults already resolved against the variant.

    Images are HxWx3 uint8 arrays; `video` is FxHxWx3 uint8 and `mask` FxHxW uint8 (255 = regenerate).
    For VACE, `image` and `last_image` without a video are keyframes: the first and last frames to keep.
    """

    task: Task
    prompt: str
    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    flow_shift: float
    negative_prompt: str = ""
    guidance_scale_2: float | None = None
    denoise_strength: float = 0.8
    image: np.ndarray | None = None
    last_image: np.ndarray | None = None
    video: np.ndarray | None = None
    mask: np.ndarray | None = None
    reference_images: list[np.ndarray] = field(default_factory=list)
    pose_video: np.ndarray | None = None  # Animate: the driving skeleton, FxHxWx3, one frame per output frame
    face_video: np.ndarray | None = None  # Animate: the driving face crops, FxSxSx3
    scheduler: Scheduler = "unipc"
    loras: tuple[LoraUse, ...] = ()


def check_size(variant: Variant, width: int, height: int, param: str = "size") -> None:
    m = variant.size_multiple
    if width < m or height < m or width % m or height % m:
        raise InvalidRequest(param, f"size {width}x{height} is off {variant.name}'s grid: both sides must be "
                                    f"multiples of {m}; presets: {_presets(variant)}")
    if width * height > variant.max_area:
        raise InvalidRequest(param, f"size {width}x{height} is larger than {variant.name} serves; "
                                    f"presets: {_presets(variant)}")


def check_frames(variant: Variant, num_frames: int, param: str = "num_frames") -> None:
    if not variant.on_frame_grid(num_frames):
        raise InvalidRequest(param, f"{num_frames} frames is off Wan's frame grid: use 4k+1 frames (1, 5, 9, ..., 81)")
    if num_frames > variant.max_frames:
        raise InvalidRequest(param, f"{num_frames} frames is more than {variant.name}'s maximum of "
                                    f"{variant.max_frames} ({variant.seconds_for_frames(variant.max_frames):g} s "
                                    f"at {variant.fps} fps)")


def check_request(variant: Variant, req: GenerationRequest) -> None:
    """Check `req` against `variant` up front, diffusers' `check_inputs` style: every message names its field."""
    if req.task not in variant.tasks:
        raise InvalidRequest("model", f"{variant.name} cannot do {req.task.value}; it does: "
                                      f"{', '.join(t.value for t in variant.tasks)}")
    if not req.prompt.strip():
        raise InvalidRequest("prompt", "prompt is required and must not be empty")
    if len(req.prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest("prompt", f"prompt is longer than {MAX_PROMPT_CHARS} characters")
    check_size(variant, req.width, req.height)
    check_frames(variant, req.num_frames)
    if req.task is Task.T2I and req.num_frames != 1:
        raise InvalidRequest("num_frames", "text-to-image makes exactly one frame")
    if not 1 <= req.num_inference_steps <= MAX_STEPS:
        raise InvalidRequest("num_inference_steps", f"num_inference_steps must be within 1..{MAX_STEPS}")
    if not 0.0 <= req.guidance_scale <= 20.0:
        raise InvalidRequest("guidance_scale", "guidance_scale must be within 0..20")
    if req.guidance_scale_2 is not None:
        if variant.boundary_ratio is None:
            raise InvalidRequest("guidance_scale_2", f"{variant.name} has one expert; guidance_scale_2 is for "
                                                     "Wan 2.2's two-expert (A14B) models")
        if not 0.0 <= req.guidance_scale_2 <= 20.0:
            raise InvalidRequest("guidance_scale_2", "guidance_scale_2 must be within 0..20")
    if not 0.0 < req.flow_shift <= 50.0:
        raise InvalidRequest("flow_shift", "flow_shift must be within (0, 50]")
    if not 0 <= req.seed < 2**63:
        raise InvalidRequest("seed", "seed must be within 0..2**63-1")
    if req.scheduler not in get_args(Scheduler):
        raise InvalidRequest("scheduler", f"scheduler must be one of {', '.join(get_args(Scheduler))}")
    if not 0.0 < req.denoise_strength <= 1.0:
        raise InvalidRequest("denoise_strength", "denoise_strength must be within (0, 1]")
    _check_inputs(req)
    _check_animate(req)


def _check_animate(req: GenerationRequest) -> None:
    """Animate: a character image, pose and face videos of the output's length, and for `replace` a background
    video with its mask; no other task takes pose or face videos."""
    if req.task is not Task.ANIMATE:
        for param in ("pose_video", "face_video"):
            if getattr(req, param) is not None:
                raise InvalidRequest(param, f"{param} is for character animation (task animate)")
        return
    if req.image is None:
        raise InvalidRequest("input_reference", "animate needs the character's image in input_reference")
    if req.num_frames < 5:
        raise InvalidRequest("num_frames", "animate makes at least 5 frames")
    for param in ("pose_video", "face_video"):
        video = getattr(req, param)
        if video is None:
            raise InvalidRequest(param, f"animate needs {param} (pre-processed from a driving video: a pose "
                                        "skeleton rendering and face crops)", code="missing_input")
        if len(video) != req.num_frames:
            raise InvalidRequest(param, f"{param} has {len(video)} frames; {req.num_frames} are made")
    if (req.video is None) != (req.mask is None):
        raise InvalidRequest("mask" if req.mask is None else "video", "replacing a character takes the background "
                                                                      "video and its mask together")


def check_loras(model: str, adapters: Mapping[str, LoraSpec], uses: Sequence[LoraUse]) -> None:
    """Each adapter a job asks for is one of `model`'s selectable adapters, once, at a sane scale."""
    if len(uses) > MAX_LORAS:
        raise InvalidRequest("loras", f"at most {MAX_LORAS} adapters per job")
    seen: set[str] = set()
    for i, use in enumerate(uses):
        if use.name not in adapters:
            known = ", ".join(sorted(adapters)) or "none"
            raise InvalidRequest(f"loras[{i}].name", f"{model} has no selectable adapter {use.name!r}; it has: "
                                                     f"{known}", code="unknown_adapter")
        if use.name in seen:
            raise InvalidRequest(f"loras[{i}].name", f"adapter {use.name!r} is listed twice")
        if not -10.0 <= use.scale <= 10.0:
            raise InvalidRequest(f"loras[{i}].scale", "an adapter's scale must be within -10..10")
        seen.add(use.name)


def _check_inputs(req: GenerationRequest) -> None:
    takes_image = req.task in (Task.I2V, Task.FLF2V, Task.VACE, Task.ANIMATE)
    if req.task in (Task.I2V, Task.FLF2V) and req.image is None:
        raise InvalidRequest("input_reference", f"{req.task.value} needs a first frame in input_reference")
    if not takes_image and req.image is not None:
        raise InvalidRequest("input_reference", f"{req.task.value} takes no input_reference image")
    if req.task is Task.FLF2V and req.last_image is None:
        raise InvalidRequest("last_image", "first-last-frame generation needs last_image")
    if req.task not in (Task.FLF2V, Task.VACE) and req.last_image is not None:
        raise InvalidRequest("last_image", "last_image is for first-last-frame and VACE models")
    if req.task is Task.VACE:
        if req.video is None and req.image is None and req.last_image is None:
            raise InvalidRequest("video", "VACE needs a source video or a keyframe (input_reference, last_image)")
        if req.video is not None and (req.image is not None or req.last_image is not None):
            raise InvalidRequest("input_reference", "send keyframes or a source video, not both")
    if req.task is Task.ANIMATE:
        return  # its video and mask are a replacement's background: _check_animate
    if req.task is Task.V2V and req.video is None:
        raise InvalidRequest("video", "video-to-video needs a source video")
    if req.video is not None:
        if req.task not in (Task.V2V, Task.VACE):
            raise InvalidRequest("video", f"{req.task.value} takes no source video")
        if req.video.shape[0] != req.num_frames:
            raise InvalidRequest("video", f"the source video has {req.video.shape[0]} frames; "
                                          f"{req.num_frames} were asked for")
        if req.video.shape[1:3] != (req.height, req.width):
            raise InvalidRequest("video", f"the source video is {req.video.shape[2]}x{req.video.shape[1]}; "
                                          f"fit it to {req.width}x{req.height} first")
    if req.mask is not None:
        if req.task is not Task.VACE or req.video is None:
            raise InvalidRequest("mask", "mask is only for VACE editing of a source video")
        if req.mask.shape != req.video.shape[:3]:
            raise InvalidRequest("mask", "mask and video must have the same number of frames and size")
    if req.reference_images:
        if req.task is not Task.VACE:
            raise InvalidRequest("reference_image", "reference images are only for VACE editing")
        if len(req.reference_images) > MAX_REFERENCE_IMAGES:
            raise InvalidRequest("reference_image", f"at most {MAX_REFERENCE_IMAGES} reference images")


def _presets(variant: Variant) -> str:
    return ", ".join(f"{k} ({w}x{h})" for k, (w, h) in variant.sizes.items())
