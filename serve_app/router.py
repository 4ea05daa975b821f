"""Request classification: validated fields and decoded media become a variant, the inputs and a Plan.

Deterministic from the inputs: video (+ mask) -> vace or v2v; first + last image -> flf2v; an image ->
i2v; a last frame only, or a reference image -> vace; one frame -> t2i; text -> t2v. An explicit `task`
or `model` takes precedence; a model without i2v/flf2v but with VACE serves keyframes through VACE; and
a combination no served model can do is an `InvalidRequest` that names the field and says why.

No HTTP here: the one domain error is mapped to OpenAI's error shape by `serve_app/errors.py`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import replace

import numpy as np

from deployments.plan import FlowInputs
from domain.records import JobParams
from pipelines.conditioning import binary_mask, fit_clip, fit_image, grid_ceil, pad_frames, size_for_image
from pipelines.extend import Method, check_overlap, extended_length, extensions_to_cover
from pipelines.request import GenerationRequest, InvalidRequest, check_frames, check_loras, check_request, check_size
from pipelines.variants import Family, Task, Variant
from pipelines.video import resample_frames
from serve_app import planner
from serve_app.animate import animate_inputs
from serve_app.config import AppConfig
from serve_app.fields import Fields, Frames, Media, Routed
from serve_app.limits import check_batch, check_cost, check_inputs
from serve_app.presets import apply_preset, enhancement, frames_for_job_type, lora_uses, recorded

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


# --- 1. classify ----------------------------------------------------------------------------------


def place_references(fields: Fields, media: Media) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The first and last frames, by `reference_mode` (none, single/start, end, both) or by what was sent."""
    images = [i for i in (media.image, media.last_image) if i is not None]
    mode = fields.reference_mode
    if mode is None:
        return media.image, media.last_image
    wanted = {"none": 0, "single": 1, "start": 1, "end": 1, "both": 2}[mode]
    if len(images) != wanted:
        raise InvalidRequest("reference_mode", f"reference_mode {mode!r} takes {wanted} image(s) "
                                               f"(input_reference, last_image); got {len(images)}")
    if mode in ("single", "start"):
        return images[0], None
    if mode == "end":
        return None, images[0]
    return media.image, media.last_image


def infer_task(fields: Fields, media: Media, first: np.ndarray | None, last: np.ndarray | None,
               variant: Variant | None) -> Task:
    if fields.task is not None:
        return fields.task
    if media.pose_video is not None or media.face_video is not None:
        return Task.ANIMATE
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
    """The model and the task it runs. Keyframe tasks fall back to VACE, which keeps a first and/or last frame
    through its mask, unless the client named the task."""
    keyframe_fallback = fields.task is None
    if fields.model is None:
        task = infer_task(fields, media, first, last, None)
        name = config.default_model(task)
        if name is None and task in (Task.I2V, Task.FLF2V) and keyframe_fallback:
            task, name = Task.VACE, config.default_model(Task.VACE)
        if name is None:
            raise InvalidRequest("model", f"no served model does {task.value}", code="unsupported_task")
        return config.variant(name), task
    if config.model(fields.model) is None:
        served = ", ".join(m.name for m in config.models)
        raise InvalidRequest("model", f"model {fields.model!r} is not served here; served: {served}",
                             code="model_not_found")
    variant = config.variant(fields.model)
    task = infer_task(fields, media, first, last, variant)
    if task in (Task.I2V, Task.FLF2V) and task not in variant.tasks and Task.VACE in variant.tasks \
            and keyframe_fallback:
        task = Task.VACE
    if task not in variant.tasks:
        does = ", ".join(t.value for t in variant.tasks)
        missing = None if fields.task else _missing_input(variant)
        if missing is not None:
            raise InvalidRequest(missing, f"{variant.name} does {does}: send {missing}", code="missing_input")
        raise InvalidRequest("model", f"{variant.name} cannot do {task.value}; it does: {does}",
                             code="unsupported_task")
    return variant, task


def _missing_input(variant: Variant) -> str | None:
    """The input every task of `variant` needs, when a request named the model but left it out."""
    if all(t in (Task.I2V, Task.FLF2V) for t in variant.tasks):
        return "input_reference"
    if all(t in (Task.V2V, Task.VACE) for t in variant.tasks):
        return "video"
    if variant.tasks == (Task.ANIMATE,):
        return "pose_video"
    return None


def extension_model(config: AppConfig, variant: Variant, needs_vace: bool) -> tuple[Variant, Method]:
    """Who extends: the model itself by VACE, else by image-to-video, else the served VACE or i2v default.

    An edit of a source clip follows the source in every window, which only VACE can do.
    """
    choices: list[tuple[Task, Method]] = [(Task.VACE, "vace")] if needs_vace else [(Task.VACE, "vace"),
                                                                                    (Task.I2V, "i2v")]
    for task, method in choices:
        if task in variant.tasks:
            return variant, method
    for task, method in choices:
        if (name := config.default_model(task)) is not None:
            return config.variant(name), method
    needed = "a VACE model" if needs_vace else "a VACE or image-to-video model"
    raise InvalidRequest("extensions", f"extending needs {needed}, and none is served", code="unsupported_task")


# --- 2. resolve sizes, frames and defaults ---------------------------------------------------------


def output_size(variant: Variant, size: str | None, image: np.ndarray | None) -> tuple[int, int]:
    """The size asked for; without one, an image's aspect ratio at the area of the model's default preset, else
    the default preset itself."""
    if size is None and image is not None:
        return size_for_image(image, variant.default_area, variant.size_multiple)
    return parse_size(variant, size)


def parse_size(variant: Variant, size: str | None) -> tuple[int, int]:
    if size is None:
        return variant.sizes[variant.default_size]
    if size in variant.sizes:
        return variant.sizes[size]
    match = _SIZE.match(size.strip())
    if match is None:
        raise InvalidRequest("size", f"size {size!r} is neither WxH nor a preset of {variant.name} "
                                     f"({', '.join(variant.sizes)})", code="invalid_size")
    width, height = int(match[1]), int(match[2])
    check_size(variant, width, height)
    return width, height


def requested_frames(variant: Variant, fields: Fields) -> int | None:
    """The frame count asked for by num_frames or seconds, checked; None when neither was sent."""
    if fields.num_frames is not None:
        frames, param = fields.num_frames, "num_frames"
    elif fields.seconds is not None:
        frames, param = variant.frames_for_seconds(fields.seconds), "seconds"
    else:
        return None
    check_frames(variant, frames, param)
    return frames


def fitted_source(variant: Variant, fields: Fields, media: Media, width: int, height: int
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The uploaded clip (and mask) at the model's frame rate and the output size, as the model reads them."""
    if media.video is None:
        if media.mask is not None:
            raise InvalidRequest("mask", "mask needs a source video")
        return None, None
    video = resample_frames(media.video, media.video_fps, variant.fps)
    mask = None
    if media.mask is not None:
        mask = binary_mask(resample_frames(media.mask, media.mask_fps, variant.fps), fields.invert_mask)
        if len(mask) != len(video):
            raise InvalidRequest("mask", f"the mask lasts {len(mask)} frames at {variant.fps} fps, "
                                         f"the video {len(video)}")
    return fit_clip(video, mask, width, height, "pad" if fields.edit_mode == "outpaint" else "crop")


def video_frames(config: AppConfig, variant: Variant, task: Task, fields: Fields,
                 source: np.ndarray | None) -> Frames:
    """The window, the extensions (enough to cover an uploaded clip unless given) and the length kept."""
    asked = requested_frames(variant, fields)
    overlap = fields.overlap_frames or config.extend.overlap_frames
    if task is Task.T2I:
        if fields.extensions:
            raise InvalidRequest("extensions", "a single image cannot be extended")
        return Frames(window=1, extensions=0, overlap=overlap, length=1)
    if source is None:
        window = asked or variant.default_frames
        extensions = fields.extensions or 0
        length = extended_length(window, overlap, extensions)
    else:  # an uploaded clip: windows over it, the output as long as the source unless extended past it
        window = asked or min(grid_ceil(len(source)), variant.default_frames)
        check_frames(variant, window, "num_frames")
        if len(source) > window:  # windows over the clip: they must move on
            check_overlap(overlap, window)
        extensions = extensions_to_cover(len(source), window, overlap) if fields.extensions is None \
            else fields.extensions
        total = extended_length(window, overlap, extensions)
        length = total if fields.extensions is not None else min(total, len(source))
    if extensions > config.extend.max_extensions:
        raise InvalidRequest("extensions", f"at most {config.extend.max_extensions} extensions")
    if extensions:
        check_overlap(overlap, window)
    return Frames(window=window, extensions=extensions, overlap=overlap, length=length)


def denoise_strength(fields: Fields) -> float:
    both = fields.denoise_strength is not None and fields.reference_strength is not None
    if both and abs(fields.denoise_strength + fields.reference_strength - 1) > 1e-6:
        raise InvalidRequest("reference_strength", "reference_strength is 1 - denoise_strength; send one of them")
    if fields.denoise_strength is not None:
        return fields.denoise_strength
    if fields.reference_strength is not None:
        return 1.0 - fields.reference_strength
    return 0.8


def generation_request(variant: Variant, task: Task, fields: Fields, width: int, height: int, frames: int,
                       seed: int) -> GenerationRequest:
    """A request with every unset field taken from `variant`'s defaults (a value sent is never swapped)."""
    def given(value: float | None, default: float) -> float:
        return default if value is None else value

    negative = variant.negative_prompt if fields.negative_prompt is None else fields.negative_prompt
    return GenerationRequest(
        task=task, prompt=fields.prompt, negative_prompt=negative, width=width, height=height,
        num_frames=frames, num_inference_steps=fields.num_inference_steps or variant.steps,
        guidance_scale=given(fields.guidance_scale, variant.guidance_scale),
        guidance_scale_2=variant.guidance_scale_2 if fields.guidance_scale_2 is None else fields.guidance_scale_2,
        flow_shift=given(fields.flow_shift, variant.flow_shift_for(width, height)), seed=seed,
        denoise_strength=denoise_strength(fields), scheduler=fields.scheduler or variant.scheduler,
        loras=lora_uses(fields),
    )


def extension_request(config: AppConfig, variant: Variant, fields: Fields, first: GenerationRequest,
                      frames: Frames, needs_vace: bool) -> tuple[Variant, Method, GenerationRequest]:
    """The model, the method and the base request of every extension window, checked like the first."""
    ext_variant, method = extension_model(config, variant, needs_vace)
    task = Task.VACE if method == "vace" else Task.I2V
    base = generation_request(ext_variant, task, fields, first.width, first.height, frames.window, first.seed)
    check_size(ext_variant, first.width, first.height)
    window = frames.window if method == "vace" else grid_ceil(frames.window - frames.overlap + 1)
    check_frames(ext_variant, window, "num_frames")
    base = replace(base, reference_images=first.reference_images if method == "vace" else [],
                   guidance_scale_2=base.guidance_scale_2 if ext_variant.boundary_ratio else None)
    check_loras(ext_variant.name, config.model(ext_variant.name).selectable, base.loras)
    return ext_variant, method, base


# --- the routes -----------------------------------------------------------------------------------


def new_seed(fields: Fields) -> int:
    return secrets.randbelow(2**31) if fields.seed is None else fields.seed


def route(config: AppConfig, fields: Fields, media: Media, job_id: str) -> Routed:
    """A video (or single image) job, in diffusers' order: classify, resolve, check, plan."""
    # 1. classify: the task, the model, and where the images go; then the preset its job type names
    fields = frames_for_job_type(config, fields)
    first, last = place_references(fields, media)
    variant, task = choose_variant(config, fields, media, first, last)
    fields = apply_preset(config, config.model(variant.name), fields)

    # 2. resolve the size, the images and the source clip fitted to it, the frames, and every default
    width, height = output_size(variant, fields.size, first if first is not None else last)
    first, last, reference = (None if i is None else fit_image(i, width, height, fields.resize_policy)
                              for i in (first, last, media.reference_image))
    check_inputs(config.limits, variant, fields, media)
    source, source_mask = fitted_source(variant, fields, media, width, height)
    drive: dict[str, np.ndarray] = {}  # Animate's pose and face videos
    if task is Task.ANIMATE:
        frames, drive = animate_inputs(variant, fields, media, width, height, requested_frames(variant, fields),
                                       config.extend.overlap_frames)
    else:
        frames = video_frames(config, variant, task, fields, source)
    request = generation_request(variant, task, fields, width, height, frames.window, new_seed(fields))
    request = replace(request, image=first, last_image=last, reference_images=[] if reference is None else [reference],
                      **drive)
    if source is not None:
        request = replace(request, video=pad_frames(source, frames.window),
                          mask=None if source_mask is None else pad_frames(source_mask, frames.window))

    # 3. check: the first window as the generator will run it, and the extensions' model and method
    check_request(variant, request)
    inputs = FlowInputs(requests=[request], audio=media.video_file if source is not None else None)
    extension: tuple[str, Method] | None = None
    if frames.extensions:
        ext_variant, method, base = extension_request(config, variant, fields, request, frames, source is not None)
        inputs = replace(inputs, extension=base, source=source, source_mask=source_mask)
        extension = (ext_variant.name, method)

    # 4. plan
    fps = fields.fps or variant.fps
    plan, out_frames, out_fps = planner.video_plan(
        variant, request, inputs, frames, extension, fps, planner.interpolation_target(fields, fps), job_id, fields,
        enhancement(config, fields, task))
    check_cost(config.limits, fields, frames, out_frames, width, height)
    params = JobParams(
        size=f"{width}x{height}", num_frames=out_frames, fps=out_fps, seed=request.seed,
        seconds=f"{max(out_frames - 1, 0) / out_fps:g}", num_inference_steps=request.num_inference_steps,
        resize_policy=fields.resize_policy if any(i is not None for i in (first, last, reference)) else None,
        reference_mode=fields.reference_mode, negative_prompt_used=bool(request.negative_prompt),
        denoise_strength=request.denoise_strength if task is Task.V2V else None, **recorded(fields))
    return Routed(variant=variant, plan=plan, inputs=inputs, params=params)


def route_batch(config: AppConfig, fields: Fields, prompts: list[str], job_id: str) -> Routed:
    """Text-to-image for each prompt as one job: image i uses seed + i; a PNG each and one ZIP of them all."""
    # 1. classify
    check_batch(config.limits, prompts, fields.negative_prompt)
    fields = frames_for_job_type(config, replace(fields, task=Task.T2I, num_frames=1))
    variant, task = choose_variant(config, fields, Media(), None, None)
    fields = apply_preset(config, config.model(variant.name), fields)
    # 2. resolve
    width, height = parse_size(variant, fields.size)
    seed = new_seed(fields)
    requests = [generation_request(variant, task, replace(fields, prompt=prompt), width, height, 1, seed + i)
                for i, prompt in enumerate(prompts)]
    # 3. check, naming the prompt by its index
    for i, request in enumerate(requests):
        try:
            check_request(variant, request)
        except InvalidRequest as exc:
            param = f"prompts[{i}]" if exc.param == "prompt" else exc.param
            raise InvalidRequest(param, exc.message, exc.code) from exc
    # 4. plan
    plan = planner.batch_plan(variant, requests, job_id, fields, enhancement(config, fields, task))
    params = JobParams(size=f"{width}x{height}", seed=seed, prompts=prompts,
                       num_inference_steps=requests[0].num_inference_steps,
                       negative_prompt_used=bool(requests[0].negative_prompt), **recorded(fields))
    return Routed(variant=variant, plan=plan, inputs=FlowInputs(requests=requests), params=params)
