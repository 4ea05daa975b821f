"""Request classification: validated fields and decoded media become a variant, the inputs and a Plan.

Deterministic from the inputs: video (+ mask) -> vace or v2v; first + last image -> flf2v; an image ->
i2v; a last frame only, or a reference image -> vace; one frame -> t2i; text -> t2v. An explicit `task`
or `model` takes precedence; a model without i2v/flf2v but with VACE serves keyframes through VACE; and
a combination no served model can do is a 400 that names the field and says why.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from deployments.plan import FlowInputs, Plan, Stage
from deployments.storage import job_prefix
from pipelines.conditioning import binary_mask, fit_clip, grid_ceil, pad_frames
from pipelines.extend import Method, extended_length, extensions_to_cover, segments
from pipelines.interpolate import interpolated_count
from pipelines.request import GenerationRequest, InvalidRequest, check_frames, check_request, check_size
from pipelines.variants import CATALOG, Family, Task, Variant
from pipelines.video import resample_frames
from serve_app.config import AppConfig
from serve_app.errors import APIError

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


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
    negative_prompt: str = ""
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
    extensions: int | None = None
    overlap_frames: int | None = None
    target_fps: int | None = None
    interpolation_factor: int | None = None
    session_id: str | None = None
    webhook_url: str | None = None


@dataclass
class Routed:
    variant: Variant
    plan: Plan
    inputs: FlowInputs
    params: dict[str, Any] = field(default_factory=dict)  # what the client sees on the job


# --- classification -------------------------------------------------------------------------------


def place_references(fields: Fields, media: Media) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The first and last frames, by `reference_mode` (none, single/start, end, both) or by what was sent."""
    images = [i for i in (media.image, media.last_image) if i is not None]
    mode = fields.reference_mode
    if mode is None:
        return media.image, media.last_image
    wanted = {"none": 0, "single": 1, "start": 1, "end": 1, "both": 2}[mode]
    if len(images) != wanted:
        raise APIError(400, f"reference_mode {mode!r} takes {wanted} image(s) (input_reference, last_image); "
                            f"got {len(images)}", param="reference_mode", code="invalid_value")
    if mode in ("single", "start"):
        return images[0], None
    if mode == "end":
        return None, images[0]
    return media.image, media.last_image


def infer_task(fields: Fields, media: Media, first: np.ndarray | None, last: np.ndarray | None,
               variant: Variant | None) -> Task:
    if fields.task is not None:
        return fields.task
    if media.video is not None:
        vace = (media.mask is not None or media.reference_image is not None or fields.edit_mode == "outpaint"
                or (variant is not None and variant.family is Family.VACE))
        return Task.VACE if vace else Task.V2V
    if first is not None:
        return Task.FLF2V if last is not None else Task.I2V
    if last is not None or media.reference_image is not None:
        return Task.VACE
    return Task.T2I if fields.num_frames == 1 else Task.T2V


def choose_variant(config: AppConfig, fields: Fields, media: Media, first: np.ndarray | None,
                   last: np.ndarray | None) -> tuple[Variant, Task]:
    # Keyframe tasks fall back to VACE, which keeps a first and/or last frame through its mask.
    keyframe_fallback = fields.task is None
    if fields.model is not None:
        if config.model(fields.model) is None:
            served = ", ".join(m.name for m in config.models)
            raise APIError(400, f"model {fields.model!r} is not served here; served: {served}",
                           param="model", code="model_not_found")
        variant = CATALOG[fields.model]
        task = infer_task(fields, media, first, last, variant)
        if task in (Task.I2V, Task.FLF2V) and task not in variant.tasks and Task.VACE in variant.tasks \
                and keyframe_fallback:
            task = Task.VACE
        if task not in variant.tasks:
            does = ", ".join(t.value for t in variant.tasks)
            missing = None if fields.task else _missing_input(variant)
            if missing is not None:
                raise APIError(400, f"{variant.name} does {does}: send {missing}", param=missing,
                               code="missing_input")
            raise APIError(400, f"{variant.name} cannot do {task.value}; it does: {does}", param="model",
                           code="unsupported_task")
        return variant, task
    task = infer_task(fields, media, first, last, None)
    name = config.default_model(task)
    if name is None and task in (Task.I2V, Task.FLF2V) and keyframe_fallback:
        task, name = Task.VACE, config.default_model(Task.VACE)
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


def extension_model(config: AppConfig, variant: Variant, needs_vace: bool) -> tuple[Variant, Method]:
    """Who extends: the model itself by VACE, else by image-to-video, else the served VACE or i2v default.

    An edit of a source clip follows the source in every window, which only VACE can do.
    """
    choices = [(Task.VACE, "vace")] if needs_vace else [(Task.VACE, "vace"), (Task.I2V, "i2v")]
    for task, method in choices:
        if task in variant.tasks:
            return variant, method
    for task, method in choices:
        if (name := config.default_model(task)) is not None:
            return CATALOG[name], method
    needed = "a VACE model" if needs_vace else "a VACE or image-to-video model"
    raise APIError(400, f"extending needs {needed}, and none is served", param="extensions",
                   code="unsupported_task")


# --- resolution of sizes and frames --------------------------------------------------------------


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


def requested_frames(variant: Variant, fields: Fields) -> int | None:
    """The frame count asked for by num_frames or seconds, checked; None when neither was sent."""
    if fields.num_frames is not None:
        frames, param = fields.num_frames, "num_frames"
    elif fields.seconds is not None:
        frames, param = variant.frames_for_seconds(fields.seconds), "seconds"
    else:
        return None
    _checked(check_frames, variant, frames, param)
    return frames


def fitted_source(variant: Variant, fields: Fields, media: Media, width: int, height: int
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The uploaded clip (and mask) at the model's frame rate and the output size, as the model reads them."""
    if media.video is None:
        if media.mask is not None:
            raise APIError(400, "mask needs a source video", param="mask", code="invalid_value")
        return None, None
    video = resample_frames(media.video, media.video_fps, variant.fps)
    mask = None
    if media.mask is not None:
        mask = binary_mask(resample_frames(media.mask, media.mask_fps, variant.fps), fields.invert_mask)
        if len(mask) != len(video):
            raise APIError(400, f"the mask lasts {len(mask)} frames at {variant.fps} fps, the video {len(video)}",
                           param="mask", code="invalid_value")
    return fit_clip(video, mask, width, height, "pad" if fields.edit_mode == "outpaint" else "crop")


def denoise_strength(fields: Fields) -> float:
    both = fields.denoise_strength is not None and fields.reference_strength is not None
    if both and abs(fields.denoise_strength + fields.reference_strength - 1) > 1e-6:
        raise APIError(400, "reference_strength is 1 - denoise_strength; send one of them",
                           param="reference_strength", code="invalid_value")
    if fields.denoise_strength is not None:
        return fields.denoise_strength
    if fields.reference_strength is not None:
        return 1.0 - fields.reference_strength
    return 0.8


def generation_request(variant: Variant, task: Task, fields: Fields, width: int, height: int, frames: int,
                       seed: int) -> GenerationRequest:
    """A request with every unset field taken from `variant`'s defaults."""
    return GenerationRequest(
        task=task, prompt=fields.prompt, negative_prompt=fields.negative_prompt, width=width, height=height,
        num_frames=frames, num_inference_steps=fields.num_inference_steps or variant.steps,
        guidance_scale=variant.guidance_scale if fields.guidance_scale is None else fields.guidance_scale,
        guidance_scale_2=variant.guidance_scale_2 if fields.guidance_scale_2 is None else fields.guidance_scale_2,
        flow_shift=fields.flow_shift or variant.flow_shift, seed=seed, denoise_strength=denoise_strength(fields),
    )


# --- planning ------------------------------------------------------------------------------------


def route(config: AppConfig, fields: Fields, media: Media, job_id: str) -> Routed:
    """Classify, resolve every default against the chosen variant, check, and plan a video job."""
    first, last = place_references(fields, media)
    variant, task = choose_variant(config, fields, media, first, last)
    width, height = parse_size(variant, fields.size)
    seed = secrets.randbelow(2**31) if fields.seed is None else fields.seed
    source, source_mask = fitted_source(variant, fields, media, width, height)
    asked = requested_frames(variant, fields)
    overlap = fields.overlap_frames or config.extend.overlap_frames

    if task is Task.T2I:
        window, extensions, length = 1, 0, 1
    elif source is None:
        window = asked or variant.default_frames
        extensions = fields.extensions or 0
        length = extended_length(window, overlap, extensions)
    else:  # an uploaded clip: windows over it, the output as long as the source unless extended past it
        window = asked or min(grid_ceil(len(source)), variant.default_frames)
        _checked(check_frames, variant, window, "num_frames")
        extensions = extensions_to_cover(len(source), window, overlap) if fields.extensions is None \
            else fields.extensions
        total = extended_length(window, overlap, extensions)
        length = total if fields.extensions is not None else min(total, len(source))
    if extensions and task is Task.T2I:
        raise APIError(400, "a single image cannot be extended", param="extensions", code="invalid_value")
    if extensions > config.extend.max_extensions:
        raise APIError(400, f"at most {config.extend.max_extensions} extensions", param="extensions",
                       code="invalid_value")
    if extensions and not 1 <= overlap < window:
        raise APIError(400, f"overlap_frames must be within 1..{window - 1} for {window}-frame windows",
                       param="overlap_frames", code="invalid_value")

    request = generation_request(variant, task, fields, width, height, window, seed)
    request = replace(request, image=first, last_image=last,
                      reference_images=[media.reference_image] if media.reference_image is not None else [])
    if source is not None:
        request = replace(request, video=pad_frames(source, window),
                          mask=None if source_mask is None else pad_frames(source_mask, window))
    _checked(check_request, variant, request)
    inputs = FlowInputs(requests=[request])

    fps = fields.fps or variant.fps
    steps = request.num_inference_steps
    stages = [Stage(kind="generate", deployment=generator_name(variant.name), params={
        "model": variant.name, "task": task.value, "size": f"{width}x{height}", "num_frames": window,
        "num_inference_steps": steps, "seed": seed})]
    parts: list[dict[str, Any]] = []
    if extensions:
        ext_variant, method = extension_model(config, variant, needs_vace=source is not None)
        base = generation_request(ext_variant, Task.VACE if method == "vace" else Task.I2V, fields, width, height,
                                  window, seed)
        _checked(check_size, ext_variant, width, height)
        _checked(check_frames, ext_variant, window if method == "vace" else grid_ceil(window - overlap + 1),
                 "num_frames")
        base = replace(base, reference_images=request.reference_images if method == "vace" else [],
                       guidance_scale_2=base.guidance_scale_2 if ext_variant.boundary_ratio else None)
        inputs = replace(inputs, extension=base, source=source, source_mask=source_mask)
        steps += base.num_inference_steps * extensions
        stages.append(Stage(kind="extend", deployment="Extender", params={
            "model": ext_variant.name, "method": method, "window": window, "overlap": overlap,
            "extensions": extensions}))
        parts = [{"name": s.name, "start": s.start, "stop": min(s.stop, length), "format": "mp4", "fps": fps,
                  "thumbnail": f"{s.name}_thumbnail"}
                 for s in segments(window, overlap, extensions) if s.start < length]

    if source is not None and media.video_file is not None:
        inputs = replace(inputs, audio=media.video_file)
    if task is Task.T2I:
        outputs = [{"name": "image", "format": "png"}]
        stages.append(Stage(kind="encode", deployment="VideoEncoder", params={"outputs": outputs}))
        out_frames, out_fps = 1, fps
    else:
        out_fps = interpolation_target(fields, fps)
        out_frames = length if out_fps == fps else interpolated_count(length, fps, out_fps)
        primary = {"name": "combined" if extensions else "video", "start": 0, "stop": out_frames, "format": "mp4",
                   "fps": out_fps, "thumbnail": "thumbnail", "audio": inputs.audio is not None}
        if out_fps == fps:
            stages.append(Stage(kind="encode", deployment="VideoEncoder",
                                params={"outputs": [*parts, primary], "audio": inputs.audio is not None}))
        else:
            if parts:
                stages.append(Stage(kind="encode", deployment="VideoEncoder", params={"outputs": parts}))
            stages.append(Stage(kind="interpolate", deployment="Interpolator",
                                params={"src_fps": fps, "dst_fps": out_fps, "num_frames": length}))
            stages.append(Stage(kind="encode", deployment="VideoEncoder",
                                params={"outputs": [primary], "audio": inputs.audio is not None}))
    stages += final_stages(job_id, fields)
    plan = Plan(task=task.value, model=variant.name, total_steps=steps, stages=stages)
    params = {"size": f"{width}x{height}", "num_frames": out_frames, "fps": out_fps, "seed": seed,
              "seconds": f"{max(out_frames - 1, 0) / out_fps:g}", "num_inference_steps": request.num_inference_steps}
    return Routed(variant=variant, plan=plan, inputs=inputs, params=params)


def interpolation_target(fields: Fields, fps: int) -> int:
    """The output frame rate: `target_fps`, or `fps * interpolation_factor`, or `fps` (no interpolation)."""
    if fields.target_fps is not None and fields.interpolation_factor is not None:
        raise APIError(400, "send target_fps or interpolation_factor, not both", param="interpolation_factor",
                       code="invalid_value")
    if fields.interpolation_factor is not None:
        return fps * fields.interpolation_factor
    if fields.target_fps is None or fields.target_fps == fps:
        return fps
    if fields.target_fps < fps:
        raise APIError(400, f"target_fps {fields.target_fps} is below the clip's {fps} fps; interpolation only "
                            "raises the frame rate", param="target_fps", code="invalid_value")
    return fields.target_fps


def final_stages(job_id: str, fields: Fields) -> list[Stage]:
    stages = [Stage(kind="upload", deployment="Uploader", params={"prefix": job_prefix(job_id, fields.session_id)})]
    if fields.webhook_url:
        stages.append(Stage(kind="notify", deployment="Notifier", params={"url": fields.webhook_url}))
    return stages


def route_batch(config: AppConfig, fields: Fields, prompts: list[str], job_id: str) -> Routed:
    """Text-to-image for each prompt as one job: image i uses seed + i; a PNG each and one ZIP of them all."""
    if len(prompts) > config.max_batch_prompts:
        raise APIError(400, f"at most {config.max_batch_prompts} prompts per batch", param="prompts",
                       code="invalid_value")
    fields = replace(fields, task=Task.T2I, num_frames=1)
    variant, task = choose_variant(config, fields, Media(), None, None)
    width, height = parse_size(variant, fields.size)
    seed = secrets.randbelow(2**31) if fields.seed is None else fields.seed
    requests = []
    for i, prompt in enumerate(prompts):
        request = generation_request(variant, task, replace(fields, prompt=prompt), width, height, 1, seed + i)
        try:
            check_request(variant, request)
        except InvalidRequest as exc:
            param = f"prompts[{i}]" if exc.param == "prompt" else exc.param
            raise APIError(400, exc.message, param=param, code="invalid_value") from exc
        requests.append(request)
    names = [f"image_{i:03d}" for i in range(len(prompts))]
    outputs = [{"name": n, "clip": i, "format": "png"} for i, n in enumerate(names)]
    outputs.append({"name": "images", "format": "zip", "members": names})
    steps = requests[0].num_inference_steps
    stages = [
        Stage(kind="generate", deployment=generator_name(variant.name), params={
            "model": variant.name, "task": task.value, "size": f"{width}x{height}", "images": len(prompts),
            "num_inference_steps": steps, "seed": seed}),
        Stage(kind="encode", deployment="VideoEncoder", params={"outputs": outputs}),
        *final_stages(job_id, fields),
    ]
    plan = Plan(task=task.value, model=variant.name, total_steps=steps * len(prompts), stages=stages)
    params = {"size": f"{width}x{height}", "seed": seed, "prompts": prompts, "num_inference_steps": steps}
    return Routed(variant=variant, plan=plan, inputs=FlowInputs(requests=requests), params=params)


def generator_name(model: str) -> str:
    """The generator deployment's name for a variant: Ray names allow no dots."""
    return "Generator-" + re.sub(r"[^A-Za-z0-9_-]", "_", model)


def _checked(check: Callable[..., None], *args: Any) -> None:
    try:
        check(*args)
    except InvalidRequest as exc:
        raise APIError(400, exc.message, param=exc.param, code="invalid_value") from exc
