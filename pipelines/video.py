"""Video and image I/O with PyAV and Pillow: H.264 MP4 out, uploads in, thumbnails.

Torch-free, so the CPU stages and the HTTP ingress can use it without loading a model stack.
"""

from __future__ import annotations

import io
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

THUMBNAIL_EDGE = 256
THUMBNAIL_QUALITY = 85
MAX_DECODED_FRAMES = 1024


class MediaError(ValueError):
    """An upload that is not a readable image or video."""


def encode_mp4(frames: np.ndarray, fps: int, crf: int = 18) -> bytes:
    """Encode FxHxWx3 uint8 frames as H.264 (yuv420p) MP4 with exactly `fps` and len(frames) frames."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected FxHxWx3 uint8 frames, got {frames.shape} {frames.dtype}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # yuv420p subsamples chroma by two
        frames = frames[:, : h - h % 2, : w - w % 2]
    # faststart (moov atom first, so players start before the download ends) rewrites the file in a
    # second pass, which needs a real file rather than a BytesIO.
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        _write_mp4(tmp.name, frames, fps, crf)
        return Path(tmp.name).read_bytes()


def _write_mp4(path: str, frames: np.ndarray, fps: int, crf: int) -> None:
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def decode_video(data: bytes, max_frames: int = MAX_DECODED_FRAMES) -> tuple[np.ndarray, float]:
    """Decode an uploaded video to FxHxWx3 uint8 frames and its frame rate."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("the upload has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 16.0
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) > max_frames:
                    raise MediaError(f"the video has more than {max_frames} frames")
    except av.FFmpegError as exc:
        raise MediaError(f"not a readable video: {exc}") from exc
    if not frames:
        raise MediaError("the video has no frames")
    return np.stack(frames), fps


def decode_image(data: bytes) -> np.ndarray:
    """Decode an uploaded image (PNG, JPEG, WEBP, ...) to HxWx3 uint8."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError("not a readable image (PNG, JPEG or WEBP expected)") from exc


def encode_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_webp(frames: np.ndarray) -> bytes:
    """The middle frame as WEBP, 256 px on the longest edge, quality 85."""
    img = Image.fromarray(frames[len(frames) // 2])
    scale = THUMBNAIL_EDGE / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=THUMBNAIL_QUALITY)
    return buf.getvalue()
