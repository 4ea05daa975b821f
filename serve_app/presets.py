"""Job types and presets: a named trade-off of quality against time fills in what a request leaves out.

A job type (`video_fast`, ...) names a preset of the model, through the model's or the app's `job_types`; a
request may also name a preset directly. Layers, first wins: the request's own fields, the preset, the model's
configured defaults, the catalog. The preset's name is written back into the fields, so the plan shows it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from deployments.plan import EnhanceParams
from domain.records import JobType
from pipelines.request import InvalidRequest, LoraUse, check_loras
from pipelines.variants import Task
from serve_app.config import DEFAULT_JOB_TYPES, AppConfig, ModelConfig, Sampling
from serve_app.fields import Fields

JOB_TYPES = tuple(DEFAULT_JOB_TYPES)  # the ones a model maps to presets; an *_enhanced one runs its plain type's


def frames_for_job_type(config: AppConfig, fields: Fields) -> Fields:
    """An image job type makes one frame, a video one more than one, and an *_enhanced one turns on prompt
    enhancement: settled before the task is inferred."""
    job_type = None if fields.job_type is None else JobType(fields.job_type)
    enhanced = fields.enhance_prompt or bool(job_type and job_type.enhanced)
    if enhanced and config.enhancer is None:
        param = "enhance_prompt" if fields.enhance_prompt else "job_type"
        raise InvalidRequest(param, "prompt enhancement is not offered here: no prompt enhancer is configured"
                             + (f"; send {job_type.base}" if job_type else ""),
                             code="unsupported_job_type" if param == "job_type" else "enhancer_unavailable")
    fields = replace(fields, job_type=job_type, enhance_prompt=enhanced)
    if job_type is None:
        return fields
    if job_type.image:
        if fields.seconds is not None or fields.num_frames not in (None, 1):
            raise InvalidRequest("job_type", f"{job_type} makes one image; drop num_frames and seconds, or send a "
                                             "video job type")
        return replace(fields, num_frames=1)
    if fields.num_frames == 1:
        raise InvalidRequest("job_type", f"{job_type} makes a video; num_frames 1 is an image job type's")
    return fields


def enhancement(config: AppConfig, fields: Fields, task: Task) -> EnhanceParams | None:
    """The enhance stage's parameters, when the request asked for one."""
    if not fields.enhance_prompt or config.enhancer is None:
        return None
    return EnhanceParams(kind="i2v" if task in (Task.I2V, Task.FLF2V) else "t2v", timeout_s=config.enhancer.timeout_s)


def apply_preset(config: AppConfig, model: ModelConfig, fields: Fields) -> Fields:
    """`fields` with the unset ones taken from the preset its job type or `preset` names, checked against `model`
    (its adapters included)."""
    if fields.job_type is not None and fields.preset is not None:
        raise InvalidRequest("preset", "send job_type or preset, not both")
    name = fields.preset
    if fields.job_type is not None:
        name = config.preset_name(model, fields.job_type)
    if name is not None:
        preset = model.all_presets.get(name)
        if preset is None:
            raise InvalidRequest("preset", f"{model.name} has no preset {name!r}; it has: "
                                           f"{', '.join(model.all_presets)}", code="unknown_preset")
        unset = {key: getattr(preset, key) for key in Sampling.model_fields
                 if getattr(fields, key) is None and getattr(preset, key) is not None}
        if fields.loras is None:
            unset["loras"] = preset.loras
        fields = replace(fields, **unset, preset=name)
    check_loras(model.name, model.selectable, lora_uses(fields))
    return fields


def lora_uses(fields: Fields) -> tuple[LoraUse, ...]:
    return tuple(LoraUse(c.name, c.scale) for c in fields.loras or ())


def recorded(fields: Fields) -> dict[str, Any]:
    """What the job records of its trade-off: the job type, the resolved preset, the adapters it runs with."""
    return {"job_type": fields.job_type, "preset": fields.preset,
            "loras": [c.model_dump() for c in fields.loras or ()]}
