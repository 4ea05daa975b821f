"""Video and image I/O with PyAV and Pillow: H.264 MP4 out (with the source's audio), uploads in, thumbnails.

Torch-free, so the CPU stages and the HTTP ingress can use it without loading a model stack.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import itertools
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.stream import VideoStream
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.bounds import MAX_IMAGE_PIXELS as MAX_IMAGE_PIXELS
from pipelines.bounds import MediaBounds, MediaError, MediaTooLarge, bounded_frames, bounded_stream, check_frame_size

THUMBNAIL_EDGE = 256
THUMBNAIL_QUALITY = 85
JPEG_QUALITY = 95
DEFAULT_FPS = 16
DEFAULT_CRF = 18  # visually lossless H.264
AAC_RATES = av.Codec("aac", "w").audio_rates
X264_CPU_AVX512 = 0x0010000  # x264.h


@dataclass(frozen=True)
class VideoInfo:
    """What an upload holds, read without keeping its frames."""

    width: int
    height: int
    frames: int
    fps: float
    duration_s: float
    has_audio: bool
    codec: str
    container: str


def encode_mp4(frames: np.ndarray, fps: int, crf: int = DEFAULT_CRF, audio: bytes | None = None) -> bytes:
    """Encode FxHxWx3 uint8 frames as H.264 (yuv420p) MP4 with exactly `fps` and len(frames) frames.

    `audio` is a media file (the source clip); its first audio stream, if any, is muxed in as AAC and cut
    at the video's duration, so the output never runs on past its last frame.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected FxHxWx3 uint8 frames, got {frames.shape} {frames.dtype}")
    if not len(frames):
        raise ValueError("no frames to encode")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # yuv420p subsamples chroma by two
        frames = frames[:, : h - h % 2, : w - w % 2]
    rate = Fraction(fps)
    try:
        return _mp4_bytes(frames, frames.shape[1:3], rate, crf, audio, audio_end=len(frames) / rate)
    except av.FFmpegError as exc:  # the frames were checked above: what fails is the audio source
        raise MediaError(f"not a readable audio source: {exc}") from exc


def normalize_video(data: bytes, bounds: MediaBounds = MediaBounds()) -> bytes:
    """An upload within `bounds` as an H.264 MP4: an H.264 MP4 unchanged (no generation loss), anything else
    re-encoded.

    The conversion keeps the source's frames and frame rate, crops odd sizes to even (yuv420p), and carries
    its audio over as AAC.
    """
    try:
        with _open(data) as container:
            stream = bounded_stream(container, bounds)
            if _container_name(container, data) == "mp4" and stream.codec_context.name == "h264":
                return data
            stream.thread_type = "AUTO"
            decoded = (f.to_ndarray(format="rgb24") for f in bounded_frames(container, stream, bounds))
            first = next(decoded, None)
            if first is None:
                raise MediaError("the video has no frames")
            h, w = first.shape[0] - first.shape[0] % 2, first.shape[1] - first.shape[1] % 2
            frames = (image[:h, :w] for image in itertools.chain([first], decoded))
            return _mp4_bytes(frames, (h, w), _frame_rate(stream), DEFAULT_CRF, audio=data, audio_end=None)
    except av.FFmpegError as exc:
        raise MediaError(f"not a readable video: {exc}") from exc


def probe_video(data: bytes) -> VideoInfo:
    """Size, length, rate and codecs of an upload; frames are counted by decoding where the container has no count."""
    try:
        with _open(data) as container:
            stream = _video_stream(container)
            fps = _frame_rate(stream)
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            if not frames:
                raise MediaError("the video has no frames")
            duration = stream.duration * stream.time_base if stream.duration and stream.time_base else frames / fps
            return VideoInfo(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                frames=frames,
                fps=float(fps),
                duration_s=float(duration),
                has_audio=bool(container.streams.audio),
                codec=stream.codec_context.codec.canonical_name,
                container=_container_name(container, data),
            )
    except av.FFmpegError as exc:
        raise MediaError(f"not a readable video: {exc}") from exc


def decode_video(data: bytes, bounds: MediaBounds = MediaBounds()) -> tuple[np.ndarray, float]:
    """Decode an uploaded video to FxHxWx3 uint8 frames and its frame rate, once its container is within
    `bounds`; at most `bounds.max_frames` frames are ever held."""
    try:
        with _open(data) as container:
            stream = bounded_stream(container, bounds)
            fps = float(stream.average_rate or stream.guessed_rate)
            frames = [frame.to_ndarray(format="rgb24") for frame in bounded_frames(container, stream, bounds)]
    except av.FFmpegError as exc:
        raise MediaError(f"not a readable video: {exc}") from exc
    if not frames:
        raise MediaError("the video has no frames")
    return np.stack(frames), fps


def resample_frames(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Retime a clip to `dst_fps` keeping its duration: each output time takes the nearest source frame.

    round(F * dst_fps / src_fps) frames (at least one), e.g. a 30 fps upload brought to Wan's 16 fps.
    """
    if src_fps <= 0 or dst_fps <= 0:
        raise ValueError(f"frame rates must be positive, got {src_fps} -> {dst_fps}")
    if not len(frames):
        raise ValueError("no frames to resample")
    count = max(1, round(len(frames) * dst_fps / src_fps))
    nearest = np.floor(np.arange(count) * (src_fps / dst_fps) + 0.5).astype(np.int64)  # round half up
    return frames[np.minimum(nearest, len(frames) - 1)]


@contextlib.contextmanager
def _bounded_image(data: bytes, bounds: MediaBounds) -> Iterator[Image.Image]:
    """An image opened lazily, its size read from the header and checked before a pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_frame_size(img.width, img.height, bounds.max_image_pixels, bounds)
            yield img
    except Image.DecompressionBombError as exc:  # Pillow's own bound, far above ours: still a 4xx, never a 500
        raise MediaTooLarge(f"the image is too large to decode: {exc}") from exc


def decode_image(data: bytes, bounds: MediaBounds = MediaBounds()) -> np.ndarray:
    """Decode an uploaded image (PNG, JPEG, WEBP, ...) to HxWx3 uint8, refusing one outside `bounds`."""
    try:
        with _bounded_image(data, bounds) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError("not a readable image (PNG, JPEG or WEBP expected)") from exc


def normalize_image(data: bytes, bounds: MediaBounds = MediaBounds()) -> bytes:
    """An uploaded image as an upright RGB JPEG (quality 95).

    EXIF orientation is applied, transparency is flattened onto white, and the metadata (EXIF, GPS) is
    dropped, since the image is always re-encoded.
    """
    try:
        with _bounded_image(data, bounds) as img:
            upright = ImageOps.exif_transpose(img)
            if upright.mode.startswith("I;16"):  # 16-bit greyscale: convert() would clip it, not scale it
                upright = upright.convert("I").point(lambda v: v / 256).convert("L")
            if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
                rgba = upright.convert("RGBA")
                upright = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            rgb = upright.convert("RGB")
    except MediaError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError("not a readable image (PNG, JPEG, WEBP, GIF, BMP or TIFF expected)") from exc
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


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


def _open(data: bytes) -> InputContainer:
    return av.open(io.BytesIO(data), mode="r")


def _video_stream(container: InputContainer) -> VideoStream:
    if not container.streams.video:
        raise MediaError("the upload has no video stream")
    return container.streams.video[0]


def _frame_rate(stream: VideoStream) -> Fraction:
    """The stream's average rate, with a small denominator: a variable-rate average makes an awkward time base."""
    return Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FPS).limit_denominator(1001)


def _container_name(container: InputContainer, data: bytes) -> str:
    """mp4, mov, mkv, webm, avi, ...: FFmpeg's demuxers read MP4 and MOV, and MKV and WebM, as one format."""
    demuxer = container.format.name.split(",")[0]
    if demuxer == "mov":
        return "mov" if container.metadata.get("major_brand", "").strip() == "qt" else "mp4"
    if demuxer == "matroska":
        at = data.find(b"\x42\x82", 0, 64)  # the EBML header's DocType element: "matroska" or "webm"
        return "webm" if at >= 0 and data[at + 3 : at + 3 + (data[at + 2] & 0x7F)] == b"webm" else "mkv"
    return demuxer


def _mp4_bytes(
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    rate: Fraction,
    crf: int,
    audio: bytes | None,
    audio_end: Fraction | None,
) -> bytes:
    # faststart (moov atom first, so players start before the download ends) rewrites the file in a
    # second pass, which needs a real file rather than a BytesIO.
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        _write_mp4(tmp.name, frames, size, rate, crf, audio, audio_end)
        return Path(tmp.name).read_bytes()


def _write_mp4(
    path: str,
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    rate: Fraction,
    crf: int,
    audio: bytes | None,
    audio_end: Fraction | None,
) -> None:
    """Write HxW H.264 video, plus the first audio stream of `audio` as AAC (to `audio_end` seconds)."""
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as out, _audio_source(audio) as src:
        video = out.add_stream("libx264", rate=rate)
        video.height, video.width = size
        video.pix_fmt = "yuv420p"
        video.codec_context.thread_type = "SLICE"
        video.codec_context.thread_count = _x264_slices(size[0])
        video.options = {"crf": str(crf), "preset": "fast", **_x264_cpu_params()}
        track = _AacTrack(out, src, audio_end) if src is not None else None
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
            if track is not None:  # interleaved, for progressive playback
                track.mux_until((i + 1) / rate)
        out.mux(video.encode())
        if track is not None:
            track.mux_until(None)


def _x264_slices(height: int) -> int:
    """x264's slice threads for `height`, fixed whatever the machine.

    x264's own choice is min(CPUs, macroblock rows / 4), and each slice count codes the frames differently, so the
    same frames gave other bytes where fewer cores were free. This is its choice wherever enough are (7 at 480p);
    a smaller machine time-shares them (2 cores: 832x480 takes about 30% longer than with its own 2 slices).
    """
    return max(1, (height + 15) // 16 // 4)


@functools.cache
def _x264_cpu_params() -> dict[str, str]:
    """x264's own CPU features less AVX-512, as an x264-params option; none where x264 would not use AVX-512.

    x264's AVX-512 MB-tree kernel (mbtree_propagate_list) steps 8 macroblocks at a time without masking the rest
    of a row: where the width in macroblocks is not a multiple of 8 (64 px, 96 px, 832 px) it also propagates up to
    7 entries past each row, and past the last row that is whatever the heap held there. The same frames then
    encode differently from one run to the next. Without it x264 uses its AVX2 kernels, which stop at the row's end.
    Where x264 cannot be asked (no /proc, a static build) it is left to its own choice.
    """
    path = _loaded_library("libx264")
    try:
        detect = ctypes.CDLL(path).x264_cpu_detect if path else None
    except (OSError, AttributeError):  # not a shared library, or one without the symbol
        detect = None
    if detect is None:
        return {}
    detect.restype = ctypes.c_uint32
    flags = detect()
    return {"x264-params": f"asm={flags & ~X264_CPU_AVX512}"} if flags & X264_CPU_AVX512 else {}


def _loaded_library(prefix: str) -> str | None:
    """The path of the shared library named `prefix`* that this process has loaded (Linux), else None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:  # address perms offset device inode [path]
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                name = Path(path).name
                if name.startswith(prefix) and name[len(prefix) : len(prefix) + 1] in (".", "-"):  # libx264-<hash>.so
                    return path
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _audio_source(data: bytes | None) -> Iterator[AudioStream | None]:
    """The first audio stream of a media file, open for decoding; None without a file or an audio stream."""
    if data is None:
        yield None
        return
    with _open(data) as container:
        yield container.streams.audio[0] if container.streams.audio else None


class _AacTrack:
    """A source audio stream re-encoded as AAC into an MP4, at the pace of its video."""

    def __init__(self, out: OutputContainer, src: AudioStream, end: Fraction | None) -> None:
        rate = src.codec_context.sample_rate  # kept where AAC has it, else the nearest AAC rate
        self.out = out
        self.stream = out.add_stream("aac", rate=min(AAC_RATES, key=lambda r: abs(r - rate)))
        self.stream.layout = "mono" if src.codec_context.channels == 1 else "stereo"
        limit = None if end is None else round(end * self.stream.sample_rate)
        self.frames = _resampled(src, self.stream.codec_context, limit)
        self.pending = next(self.frames, None)

    def mux_until(self, t: Fraction | None) -> None:
        """Encode the audio that starts before `t` seconds; all that is left, and flush, for None."""
        while self.pending is not None and (t is None or self.pending.pts < t * self.stream.sample_rate):
            self.out.mux(self.stream.encode(self.pending))
            self.pending = next(self.frames, None)
        if t is None:
            self.out.mux(self.stream.encode())


def _resampled(src: AudioStream, ctx: AudioCodecContext, limit: int | None) -> Iterator[av.AudioFrame]:
    """The source's audio in the encoder's format, layout and rate, cut exactly after `limit` samples.

    Timestamps count samples from zero, so the audio starts with the video whatever the source's offsets.
    """
    resampler = av.AudioResampler(format=ctx.format, layout=ctx.layout, rate=ctx.sample_rate)
    done = 0
    for decoded in itertools.chain(src.container.decode(src), [None]):
        for frame in resampler.resample(decoded):
            if limit is not None and done + frame.samples > limit:  # planar: channels x samples
                frame = av.AudioFrame.from_ndarray(
                    frame.to_ndarray()[:, : limit - done], format=ctx.format.name, layout=ctx.layout.name
                )
                frame.sample_rate = ctx.sample_rate
            frame.pts, frame.time_base = done, Fraction(1, ctx.sample_rate)
            done += frame.samples
            if frame.samples:
                yield frame
            if limit is not None and done >= limit:
                return
