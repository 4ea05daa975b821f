"""Character animation's inputs: the pose and face videos at the model's frame rate, fitted and cut to the length
made. They come pre-processed (a rendered pose skeleton, face crops): deriving them from a raw driving video needs
pose and face detectors that diffusers does not ship, so the service accepts them as they are."""

from __future__ import annotations

from typing import Any

from pipelines.conditioning import fit_clip
from pipelines.request import InvalidRequest
from pipelines.variants import Variant
from pipelines.video import resample_frames
from serve_app.fields import Fields, Frames, Media


def animate_inputs(variant: Variant, fields: Fields, media: Media, width: int, height: int, asked: int | None,
                   overlap: int) -> tuple[Frames, dict[str, Any]]:
    """The job's length (`asked`, else as much of the driving videos as fits the grid and the model, one segment)
    and the request's pose and face videos."""
    if media.pose_video is None or media.face_video is None:
        missing = "pose_video" if media.pose_video is None else "face_video"
        raise InvalidRequest(missing, f"animate needs pose_video and face_video, pre-processed from the driving "
                                      f"video; {missing} is missing", code="missing_input")
    if fields.extensions:
        raise InvalidRequest("extensions", "an animation follows its driving videos; it is not extended")
    pose = resample_frames(media.pose_video, media.pose_fps, variant.fps)
    face = resample_frames(media.face_video, media.face_fps, variant.fps)
    available = min(len(pose), len(face))
    frames = asked or min(((available - 1) // variant.frame_multiple) * variant.frame_multiple + 1, variant.max_frames)
    if frames > available:
        param = "face_video" if len(face) < len(pose) else "pose_video"
        raise InvalidRequest(param, f"{param} lasts {available} frames at {variant.fps} fps; {frames} were asked for")
    pose, _ = fit_clip(pose[:frames], None, width, height, "crop")
    face, _ = fit_clip(face[:frames], None, variant.face_size, variant.face_size, "crop")
    return Frames(window=frames, extensions=0, overlap=overlap, length=frames), {"pose_video": pose,
                                                                                  "face_video": face}
