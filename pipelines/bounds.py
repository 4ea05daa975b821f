"""Bounds on input media, checked from an image's header or a video's container before anything is decoded,
and while a video is decoded, since containers can lie.

The HTTP layer builds them from its config (`serve_app/limits.py:media_bounds`): `pipelines/` knows no config.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import av
from av.container import InputContainer
from av.video.stream import VideoStream

MAX_IMAGE_PIXELS = 4096 * 4096  # an input image's default bound


class MediaError(ValueError):
    """An upload that is not a readable image or video, or one outside the bounds."""


class MediaOutOfBounds(MediaError):
    """A readable upload outside a bound (its size, shape, rate or length), found before it was decoded."""


class MediaTooLarge(MediaOutOfBounds):
    """A readable upload beyond a limit, found from its header before it was decoded."""


@dataclass(frozen=True)
class MediaBounds:
    """What an input image or video may be. The defaults bound size and length as the config's do
    (`LimitsConfig`); its shape bounds (shorter side, aspect ratio) come from the config alone."""

    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_video_pixels: int = 2560 * 1440
    min_side: int = 1
    max_aspect: float = float("inf")
    min_fps: float = 1.0
    max_fps: float = 240.0
    max_seconds: float = 300.0
    max_frames: int = 2000
    max_decoded_bytes: int = 2 * 2**30  # a video's RGB frames once decoded: what memory it may take


def _decoded(width: int, height: int, frames: int) -> int:
    return width * height * 3 * frames


def check_frame_size(width: int, height: int, max_pixels: int, bounds: MediaBounds, what: str = "image") -> None:
    """Pixels, shorter side and aspect ratio of an image or a video frame."""
    if width * height > max_pixels:
        raise MediaTooLarge(f"the {what} is {width}x{height}, more than {max_pixels:,} pixels")
    if min(width, height) < bounds.min_side:
        raise MediaOutOfBounds(f"the {what} is {width}x{height}; its shorter side must be at least "
                               f"{bounds.min_side} px")
    if max(width, height) > bounds.max_aspect * min(width, height):
        raise MediaOutOfBounds(f"the {what} is {width}x{height}; its aspect ratio must be at most "
                               f"{bounds.max_aspect:g}:1")


def check_video(width: int, height: int, fps: float, frames: int, seconds: float, bounds: MediaBounds) -> None:
    """A video as its container describes it: frame size, frame rate, duration and frame count."""
    check_frame_size(width, height, bounds.max_video_pixels, bounds, "video")
    if not bounds.min_fps <= fps <= bounds.max_fps:
        raise MediaOutOfBounds(f"the video plays at {fps:g} fps; {bounds.min_fps:g} to {bounds.max_fps:g} fps "
                               "are accepted")
    if seconds > bounds.max_seconds:
        raise MediaTooLarge(f"the video lasts {seconds:g} s, more than {bounds.max_seconds:g} s")
    if frames > bounds.max_frames:
        raise MediaTooLarge(f"the video has {frames} frames, more than {bounds.max_frames}")
    if _decoded(width, height, frames) > bounds.max_decoded_bytes:
        raise MediaTooLarge(f"the video's {frames} frames of {width}x{height} take more than "
                            f"{bounds.max_decoded_bytes // 2**20:,} MiB decoded")


def bounded_stream(container: InputContainer, bounds: MediaBounds) -> VideoStream:
    """The video stream, its size, rate, duration and length checked from the container before a frame is
    decoded; a container without a frame count is judged by duration x rate (and decoding stops at the cap)."""
    if not container.streams.video:
        raise MediaError("the upload has no video stream")
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    else:
        seconds = (container.duration or 0) / av.time_base
    frames = stream.frames or round(seconds * fps)
    check_video(stream.codec_context.width, stream.codec_context.height, fps, frames, seconds, bounds)
    return stream


def bounded_frames(container: InputContainer, stream: VideoStream, bounds: MediaBounds) -> Iterator[av.VideoFrame]:
    """The stream's frames, stopping where a lying container would take them past `bounds`: more frames than
    allowed, a frame larger than allowed, or frames that change size."""
    size = None
    for i, frame in enumerate(container.decode(stream)):
        if i >= bounds.max_frames:
            raise MediaTooLarge(f"the video has more than {bounds.max_frames} frames")
        if _decoded(frame.width, frame.height, i + 1) > bounds.max_decoded_bytes:
            raise MediaTooLarge(f"the video takes more than {bounds.max_decoded_bytes // 2**20:,} MiB decoded")
        if size is None:
            check_frame_size(frame.width, frame.height, bounds.max_video_pixels, bounds, "video")
            size = (frame.width, frame.height)
        elif (frame.width, frame.height) != size:
            raise MediaError(f"the video's frames change size, from {size[0]}x{size[1]}")
        yield frame
