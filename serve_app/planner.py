"""Planning: a resolved, checked request becomes the ordered stages of its Plan, with typed parameters.

The router decides what to make; this module writes down how: generate, extend, interpolate, encode (each
output a frame range of a clip, the seams of a long video included), upload, notify.
"""

from __future__ import annotations

from deployments.plan import (
    Encode,
    EncodeParams,
    Enhance,
    EnhanceParams,
    Extend,
    ExtendParams,
    FlowInputs,
    Generate,
    GenerateParams,
    Interpolate,
    InterpolateParams,
    Notify,
    NotifyParams,
    Output,
    Plan,
    Stage,
    Upload,
    UploadParams,
)
from deployments.storage import job_prefix
from pipelines.extend import Method, segments
from pipelines.interpolate import interpolated_count
from pipelines.request import GenerationRequest, InvalidRequest
from pipelines.variants import Task, Variant
from serve_app.fields import Fields, Frames


def video_plan(variant: Variant, request: GenerationRequest, inputs: FlowInputs, frames: Frames,
               extension: tuple[str, Method] | None, fps: int, out_fps: int, job_id: str, fields: Fields,
               enhance: EnhanceParams | None = None) -> tuple[Plan, int, int]:
    """The plan of a video (or one-image) job, with the output's frame count and frame rate."""
    stages: list[Stage] = [*enhance_stage(enhance),
                           Generate(params=generate_params(variant, request, fields, num_frames=frames.window))]
    steps = request.num_inference_steps
    parts: list[Output] = []
    if extension is not None and inputs.extension is not None:
        model, method = extension
        steps += inputs.extension.num_inference_steps * frames.extensions
        stages.append(Extend(params=ExtendParams(model=model, method=method, window=frames.window,
                                                 overlap=frames.overlap, extensions=frames.extensions)))
        parts = [Output(name=s.name, format="mp4", start=s.start, stop=min(s.stop, frames.length), fps=fps,
                        thumbnail=f"{s.name}_thumbnail")
                 for s in segments(frames.window, frames.overlap, frames.extensions) if s.start < frames.length]

    if request.task is Task.T2I:
        stages.append(Encode(params=EncodeParams(outputs=[Output(name="image", format="png")])))
        out_frames, out_fps = 1, fps
    else:
        out_frames = frames.length if out_fps == fps else interpolated_count(frames.length, fps, out_fps)
        primary = Output(name="combined" if parts else "video", format="mp4", stop=out_frames, fps=out_fps,
                         thumbnail="thumbnail", audio=inputs.audio is not None)
        if out_fps == fps:
            stages.append(Encode(params=EncodeParams(outputs=[*parts, primary])))
        else:
            if parts:
                stages.append(Encode(params=EncodeParams(outputs=parts)))
            stages.append(Interpolate(params=InterpolateParams(src_fps=fps, dst_fps=out_fps,
                                                               num_frames=frames.length)))
            stages.append(Encode(params=EncodeParams(outputs=[primary])))
    stages += final_stages(job_id, fields)
    return Plan(task=request.task.value, model=variant.name, total_steps=steps, stages=stages), out_frames, out_fps


def generate_params(variant: Variant, request: GenerationRequest, fields: Fields, **counts: int) -> GenerateParams:
    """A generate stage as it will run: every sampling parameter resolved, the preset that set them, the adapters."""
    return GenerateParams(
        model=variant.name, task=request.task.value, size=f"{request.width}x{request.height}",
        num_inference_steps=request.num_inference_steps, seed=request.seed, guidance_scale=request.guidance_scale,
        guidance_scale_2=request.guidance_scale_2, flow_shift=request.flow_shift, scheduler=request.scheduler,
        preset=fields.preset, loras=fields.loras or [], **counts)


def batch_plan(variant: Variant, requests: list[GenerationRequest], job_id: str, fields: Fields,
               enhance: EnhanceParams | None = None) -> Plan:
    """One image per request, each a PNG, and one ZIP of them all."""
    first = requests[0]
    names = [f"image_{i:03d}" for i in range(len(requests))]
    outputs = [Output(name=n, clip=i, format="png") for i, n in enumerate(names)]
    outputs.append(Output(name="images", format="zip", members=names))
    stages: list[Stage] = [
        *enhance_stage(enhance),
        Generate(params=generate_params(variant, first, fields, images=len(requests))),
        Encode(params=EncodeParams(outputs=outputs)),
        *final_stages(job_id, fields),
    ]
    return Plan(task=first.task.value, model=variant.name, total_steps=first.num_inference_steps * len(requests),
                stages=stages)


def enhance_stage(params: EnhanceParams | None) -> list[Stage]:
    return [] if params is None else [Enhance(params=params)]


def final_stages(job_id: str, fields: Fields) -> list[Stage]:
    stages: list[Stage] = [Upload(params=UploadParams(prefix=job_prefix(job_id, fields.session_id)))]
    if fields.webhook_url:
        stages.append(Notify(params=NotifyParams(url=fields.webhook_url)))
    return stages


def interpolation_target(fields: Fields, fps: int) -> int:
    """The output frame rate: `target_fps`, or `fps * interpolation_factor`, or `fps` (no interpolation)."""
    if fields.target_fps is not None and fields.interpolation_factor is not None:
        raise InvalidRequest("interpolation_factor", "send target_fps or interpolation_factor, not both")
    if fields.interpolation_factor is not None:
        return fps * fields.interpolation_factor
    if fields.target_fps is None or fields.target_fps == fps:
        return fps
    if fields.target_fps < fps:
        raise InvalidRequest("target_fps", f"target_fps {fields.target_fps} is below the clip's {fps} fps; "
                                           "interpolation only raises the frame rate")
    return fields.target_fps
