"""Helpers to make and read real media in tests: PNG uploads, MP4s encoded and decoded with PyAV."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from pipelines.video import encode_mp4


def png(width: int = 64, height: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a few bytes of pixels: a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def mp4(frames: int = 9, width: int = 64, height: int = 32, fps: int = 16, value: int | None = None) -> bytes:
    rng = np.random.default_rng(1)
    if value is None:
        data = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    else:
        data = np.full((frames, height, width, 3), value, dtype=np.uint8)
    return encode_mp4(data, fps)


def probe(data: bytes) -> tuple[np.ndarray, float, str]:
    """Decode an MP4: (frames FxHxWx3, fps, codec name)."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
        return frames, float(stream.average_rate), stream.codec_context.name


_FORMATS = {"mkv": "matroska"}
_AUDIO_ENCODERS = {  # the first that this FFmpeg build has
    "mp4": ("aac",),
    "mov": ("aac",),
    "mkv": ("aac",),
    "webm": ("libopus", "libvorbis"),
    "avi": ("pcm_s16le", "libmp3lame"),
}


def media_file(
    frames: int = 9,
    width: int = 64,
    height: int = 32,
    fps: int = 16,
    audio_s: float | None = None,
    container: str = "mp4",
    codec: str = "libx264",
    sample_rate: int = 48000,
) -> bytes:
    """A real clip in `container` (mp4, mov, mkv, avi, webm): a bar moving over a gradient, and with `audio_s`
    a stereo 440 Hz tone of that many seconds, in an audio codec the container takes."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=_FORMATS.get(container, container)) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio_s is not None:
            name = next(c for c in _AUDIO_ENCODERS[container] if c in av.codecs_available)
            sound = out.add_stream(name, rate=sample_rate)
            sound.layout = "stereo"
        for i, image in enumerate(moving_frames(frames, width, height)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None and audio_s is not None:
            tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(round(audio_s * sample_rate)) / sample_rate)
            for start in range(0, len(tone), 1024):
                chunk = tone[start : start + 1024].astype(np.float32)
                frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode())
    return buf.getvalue()


def moving_frames(frames: int = 9, width: int = 64, height: int = 32) -> np.ndarray:
    """FxHxWx3 uint8: a white bar moving right over a blue gradient, so every frame differs."""
    images = np.zeros((frames, height, width, 3), np.uint8)
    images[..., 2] = np.linspace(0, 200, width, dtype=np.uint8)
    for i in range(frames):
        x = i * 5 % width
        images[i, :, x : x + 6] = 255
    return images


def audio_info(data: bytes) -> tuple[str, float, int] | None:
    """(codec, duration in seconds, sample rate) of the first audio stream, the duration from decoded samples."""
    with av.open(io.BytesIO(data)) as c:
        if not c.streams.audio:
            return None
        stream = c.streams.audio[0]
        samples = sum(frame.samples for frame in c.decode(stream))
        rate = stream.codec_context.sample_rate
        return stream.codec_context.codec.canonical_name, samples / rate, rate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def decoded_planes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The first video stream decoded as the coded YUV 4:2:0 planes and as RGB: (F x 3H/2 x W, F x H x W x 3)."""
    with av.open(io.BytesIO(data)) as c:
        frames = list(c.decode(c.streams.video[0]))
        yuv = np.stack([f.to_ndarray(format="yuv420p") for f in frames])
        return yuv, np.stack([f.to_ndarray(format="rgb24") for f in frames])


def dominant_frequency(data: bytes) -> float:
    """The peak frequency in Hz of the first audio stream, mixed to mono.

    The strongest bin of a Hann-windowed FFT, refined between bins by a parabola through the log magnitudes, so a
    1 s clip resolves a tone to well under 1 Hz. Silence has no peak worth the name: check `audio_rms` as well.
    """
    mono, rate = _mono_samples(data)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    peak = int(np.argmax(spectrum[1:-1])) + 1  # not DC, and a neighbour on each side to interpolate with
    left, centre, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
    curvature = left - 2 * centre + right
    offset = 0.5 * (left - right) / curvature if curvature else 0.0  # flat (silence): the bin itself
    return float((peak + offset) * rate / len(mono))


def audio_rms(data: bytes) -> float:
    """The RMS level of the first audio stream, mixed to mono; 1.0 is full scale (a full-scale sine: 0.707)."""
    mono, _ = _mono_samples(data)
    return float(np.sqrt(np.mean(mono**2)))


def _mono_samples(data: bytes) -> tuple[np.ndarray, int]:
    """The first audio stream decoded to float64 samples at full scale 1.0, channels averaged, and its rate."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        chunks = [frame.to_ndarray() for frame in c.decode(stream)]
        ctx = stream.codec_context
        planar, channels, rate = ctx.format.is_planar, ctx.channels, ctx.sample_rate
    samples = np.concatenate(chunks, axis=-1).astype(np.float64)  # planar: channels x n; packed: 1 x n*channels
    if not planar:
        samples = samples.reshape(-1, channels).T
    if np.issubdtype(chunks[0].dtype, np.integer):  # s16, s32: scaled as the float formats are
        samples /= np.iinfo(chunks[0].dtype).max
    return samples.mean(axis=0), rate


def still_mp4(width: int, height: int, frames: int, fps: int | Fraction = 16) -> bytes:
    """A real H.264 MP4 of `frames` black frames that costs almost nothing to make, at any claimed size: one frame
    is encoded (an I-frame, then a P-frame of skipped blocks), and the P-frame's packet is muxed again for every
    frame after the first. 3840x2160 x 1000 frames is about 60 KB."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "51", "bf": "0", "g": str(frames)}
        black = av.VideoFrame(width, height, "yuv420p")
        for plane, value in zip(black.planes, (16, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        coded = []
        for pts in range(2):
            black.pts = pts
            coded += stream.encode(black)
        coded += stream.encode()
        intra, skipped = bytes(coded[0]), bytes(coded[1])
        for i in range(frames):
            packet = av.Packet(intra if i == 0 else skipped)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, 1 / Fraction(fps)
            packet.is_keyframe = i == 0
            out.mux(packet)
    return buf.getvalue()
