"""What a request may carry and cost, from `config.limits`: each check raises the domain's `InvalidRequest` (a 400)
naming the field to change, before the work it bounds. The body's own size and nesting are `serve_app/body.py`'s;
media are bounded while they are read (`media_bounds` → `pipelines/bounds.py`).
"""

from __future__ import annotations

from pipelines.bounds import MediaBounds
from pipelines.request import InvalidRequest
from pipelines.variants import Variant
from serve_app.config import LimitsConfig
from serve_app.fields import Fields, Frames, Media


def media_bounds(limits: LimitsConfig) -> MediaBounds:
    """The config's bounds on input images and videos, in the form `pipelines/video.py` takes."""
    return MediaBounds(
        max_image_pixels=limits.max_image_pixels, max_video_pixels=limits.max_video_pixels,
        min_side=limits.min_media_side, max_aspect=limits.max_aspect_ratio, min_fps=limits.min_video_fps,
        max_fps=limits.max_video_fps, max_seconds=limits.max_video_seconds, max_frames=limits.max_video_frames,
        max_decoded_bytes=limits.max_video_decoded_mb * 2**20,
    )


def check_text(limits: LimitsConfig, param: str, text: str | None) -> None:
    if text is not None and len(text) > limits.max_prompt_chars:
        raise InvalidRequest(param, f"{param} is {len(text):,} characters; at most {limits.max_prompt_chars:,}",
                             code="too_long")


def check_inputs(limits: LimitsConfig, variant: Variant, fields: Fields, media: Media) -> None:
    """The prompts' lengths, and the source clip and mask once retimed to the model's frame rate: checked before
    they are retimed, since a 1 fps clip brought to 16 fps takes 16 times the frames."""
    check_text(limits, "prompt", fields.prompt)
    check_text(limits, "negative_prompt", fields.negative_prompt)
    for param, clip, fps in (("video", media.video, media.video_fps), ("mask", media.mask, media.mask_fps)):
        if clip is not None:
            retimed = max(1, round(len(clip) * variant.fps / fps))
            if retimed > limits.max_video_frames:
                raise InvalidRequest(param, f"{param} has {len(clip)} frames at {fps:g} fps, {retimed} once retimed "
                                            f"to {variant.name}'s {variant.fps} fps; at most {limits.max_video_frames}",
                                     code="too_long")


def check_batch(limits: LimitsConfig, prompts: list[str], negative_prompt: str | None) -> None:
    if len(prompts) > limits.max_batch_prompts:
        raise InvalidRequest("prompts", f"at most {limits.max_batch_prompts} prompts per batch")
    check_text(limits, "negative_prompt", negative_prompt)
    for i, prompt in enumerate(prompts):
        check_text(limits, f"prompts[{i}]", prompt)


def check_metadata(limits: LimitsConfig, metadata: dict[str, str]) -> None:
    if len(metadata) > limits.max_metadata_keys:
        raise InvalidRequest("metadata", f"metadata has {len(metadata)} entries; at most {limits.max_metadata_keys}")
    for key, value in metadata.items():
        if max(len(key), len(value)) > limits.max_metadata_chars:
            raise InvalidRequest("metadata", f"each metadata key and value is at most {limits.max_metadata_chars} "
                                             f"characters; {key[:32]!r} is longer", code="too_long")


def check_cost(limits: LimitsConfig, fields: Fields, frames: Frames, out_frames: int, width: int, height: int
               ) -> None:
    """The output's frames (after extension windows and interpolation) and frames x pixels, naming what drives
    them: the interpolation, else the extensions, else the length or the size asked for."""
    interpolation = "target_fps" if fields.target_fps is not None else "interpolation_factor"
    if frames.length > limits.max_output_frames:
        param = _length_param(fields, frames)
        raise InvalidRequest(param, f"{param} makes {frames.length:,} frames; at most {limits.max_output_frames:,}",
                             code="too_costly")
    if out_frames > limits.max_output_frames:
        raise InvalidRequest(interpolation, f"{interpolation} makes {out_frames:,} frames from {frames.length:,}; at "
                                            f"most {limits.max_output_frames:,}", code="too_costly")
    cost = out_frames * width * height
    if cost > limits.max_output_pixel_frames:
        if out_frames > frames.length and frames.length * width * height <= limits.max_output_pixel_frames:
            param = interpolation
        else:
            param = "extensions" if frames.extensions and fields.extensions is not None else "size"
        raise InvalidRequest(param, f"{out_frames:,} frames of {width}x{height} are {cost:,} pixels; at most "
                                    f"{limits.max_output_pixel_frames:,} (frames x width x height)", code="too_costly")


def _length_param(fields: Fields, frames: Frames) -> str:
    if frames.extensions and fields.extensions is not None:
        return "extensions"
    return "num_frames" if fields.num_frames is not None else "seconds" if fields.seconds is not None else "video"
