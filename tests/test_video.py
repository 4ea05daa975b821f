"""Video I/O without Ray: upload normalisation (containers, codecs, audio, images), audio muxing, retiming."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from pipelines.video import (
    MediaError,
    MediaTooLarge,
    VideoInfo,
    decode_image,
    encode_mp4,
    normalize_image,
    normalize_video,
    probe_video,
    resample_frames,
)
from tests.media import (
    audio_info,
    audio_rms,
    decoded_planes,
    dominant_frequency,
    media_file,
    moving_frames,
    png_header,
    probe,
)

AAC_FRAME = 1024  # samples
TONE_HZ = 440  # media_file's tone: 0.3 of full scale, so 0.21 RMS
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def _assert_tone(data: bytes) -> None:
    """The audio is media_file's 440 Hz tone, at about its level: not silence, not another sound."""
    assert abs(dominant_frequency(data) - TONE_HZ) < 2
    assert 0.15 < audio_rms(data) < 0.3


def _wav(signal: np.ndarray, rate: int = 48000) -> bytes:
    """A mono 16-bit WAV of `signal` (full scale 1.0): an audio source for encode_mp4 other than media_file's tone."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((signal * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def _assert_h264_mp4_like(converted: bytes, source: bytes, frames: int, width: int, height: int) -> None:
    decoded, fps, codec = probe(converted)
    original, _, _ = probe(source)
    assert codec == "h264" and fps == 16
    assert decoded.shape == (frames, height, width, 3)
    assert probe_video(converted).container == "mp4"
    # Same pictures in the same order: the moving bar makes frames differ by far more than the coding loss.
    assert np.abs(decoded.astype(int) - original[:, :height, :width].astype(int)).mean() < 6


def test_an_h264_mp4_is_returned_unchanged() -> None:
    data = media_file(audio_s=0.5)
    assert normalize_video(data) == data


@pytest.mark.parametrize(("container", "codec"), [
    ("mov", "libx264"),
    ("mkv", "libx264"),
    ("avi", "mpeg4"),
    ("webm", "libvpx"),
    ("webm", "libvpx-vp9"),
    ("mp4", "mpeg4"),  # an MP4 whose video is not H.264 is converted too
])
def test_other_uploads_become_h264_mp4(container: str, codec: str) -> None:
    source = media_file(frames=9, width=64, height=32, fps=16, container=container, codec=codec)
    converted = normalize_video(source)
    assert converted != source
    _assert_h264_mp4_like(converted, source, frames=9, width=64, height=32)
    assert audio_info(converted) is None


def test_odd_sizes_are_cropped_to_even() -> None:
    odd = io.BytesIO()
    with av.open(odd, mode="w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=16)
        stream.width, stream.height, stream.pix_fmt = 65, 33, "yuv444p"
        for frame in moving_frames(5, width=65, height=33):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    _assert_h264_mp4_like(normalize_video(odd.getvalue()), odd.getvalue(), frames=5, width=64, height=32)


@pytest.mark.parametrize(("container", "codec", "audio_codec"), [
    ("mov", "libx264", "aac"),
    ("mkv", "libx264", "aac"),
    ("avi", "mpeg4", "pcm_s16le"),
    ("webm", "libvpx-vp9", "opus"),
])
def test_conversion_carries_the_audio_as_aac(container: str, codec: str, audio_codec: str) -> None:
    source = media_file(frames=16, audio_s=1.0, container=container, codec=codec)
    src_codec, src_seconds, _ = audio_info(source) or ("", 0.0, 0)
    assert src_codec == audio_codec
    converted = normalize_video(source)
    name, seconds, rate = audio_info(converted) or ("", 0.0, 0)
    assert (name, rate) == ("aac", 48000)
    assert abs(seconds - src_seconds) < AAC_FRAME / rate
    assert probe(converted)[0].shape[0] == 16
    _assert_tone(source)
    _assert_tone(converted)


def test_encode_mp4_cuts_a_longer_source_audio_at_the_video_end() -> None:
    frames = moving_frames(33)  # 33 / 16 = 2.0625 s
    out = encode_mp4(frames, 16, audio=media_file(audio_s=3.0, sample_rate=44100))
    name, seconds, rate = audio_info(out) or ("", 0.0, 0)
    assert (name, rate) == ("aac", 44100)  # the source's rate, which AAC has
    # Decoders return whole AAC frames; the MP4 itself records the exact cut (to its 1 ms movie timescale).
    assert 0 <= seconds - 2.0625 < AAC_FRAME / rate
    with av.open(io.BytesIO(out)) as c:
        stream = c.streams.audio[0]
        assert abs(float(stream.duration * stream.time_base) - 2.0625) <= 0.001
    decoded, fps, codec = probe(out)
    assert decoded.shape == frames.shape and fps == 16 and codec == "h264"
    _assert_tone(out)


def test_encode_mp4_keeps_a_shorter_source_audio_its_own_length() -> None:
    out = encode_mp4(moving_frames(33), 16, audio=media_file(audio_s=1.0, container="webm", codec="libvpx"))
    name, seconds, rate = audio_info(out) or ("", 0.0, 0)
    assert (name, rate) == ("aac", 48000)
    assert abs(seconds - 1.0) < AAC_FRAME / rate
    _assert_tone(out)


def _sine(hz: float, amplitude: float = 0.3, seconds: float = 1.0, rate: int = 48000) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)


@pytest.mark.parametrize(("signal", "is_the_tone"), [
    (_sine(TONE_HZ), True),  # the control: the tone itself passes through a WAV too
    (np.zeros(48000), False),  # the audio replaced by silence
    (_sine(2 * TONE_HZ), False),  # by another sound
    (_sine(TONE_HZ, amplitude=0.01), False),  # nearly lost: 30 dB down
])
def test_the_tone_check_tells_the_tone_from_other_audio(signal: np.ndarray, is_the_tone: bool) -> None:
    out = encode_mp4(moving_frames(16), 16, audio=_wav(signal))
    assert audio_info(out) is not None  # an AAC track every time: only what it holds differs
    if is_the_tone:
        _assert_tone(out)
    else:
        with pytest.raises(AssertionError):
            _assert_tone(out)


def test_encode_mp4_without_source_audio_has_no_audio_stream() -> None:
    frames = moving_frames(9)
    assert audio_info(encode_mp4(frames, 16, audio=media_file())) is None
    assert audio_info(encode_mp4(frames, 16)) is None


def test_encode_mp4_rejects_an_unreadable_audio_source() -> None:
    with pytest.raises(MediaError):
        encode_mp4(moving_frames(9), 16, audio=b"\x00" * 1000)


def test_encode_mp4_is_bit_exact_run_after_run_and_from_several_threads() -> None:
    """The same frames give the same bytes, and so the same decoded pictures, every time and from any thread.

    96 px is 6 macroblocks a row, not the multiple of 8 that x264's AVX-512 MB-tree kernel steps by; that kernel
    reads past its arrays, so on an AVX-512 CPU the pictures changed with what the heap held there, which decoding
    the clip between encodes stirs: 8 to 38 of these 40 serial re-encodes differed before the fix, in 7 runs.
    """
    frames = moving_frames(9, width=96, height=64)
    first = encode_mp4(frames, 16)
    yuv, rgb = decoded_planes(first)

    def encode_and_decode(_: int) -> tuple[bytes, np.ndarray, np.ndarray]:
        data = encode_mp4(frames, 16)
        return (data, *decoded_planes(data))

    serial = [encode_and_decode(i) for i in range(40)]
    with ThreadPoolExecutor(4) as pool:  # as the encoder deployment runs several encodes at once
        threaded = list(pool.map(encode_and_decode, range(24)))
    for name, results in (("serial", serial), ("threaded", threaded)):
        differ = [i for i, (data, y, r) in enumerate(results)
                  if data != first or not np.array_equal(y, yuv) or not np.array_equal(r, rgb)]
        assert not differ, f"{name}: {len(differ)} of {len(results)} encodes differ from the first"


@pytest.mark.skipif(CPUS < 2, reason="needs two CPUs, to take one away")
def test_encode_mp4_gives_the_same_bytes_on_one_cpu_as_on_all() -> None:
    """x264 chose its slice count from the CPUs it may run on, and each count codes the frames differently."""
    frames = moving_frames(5, width=64, height=128)  # 8 macroblock rows: room for 2 slices

    def on_one_cpu() -> bytes:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # 0: this thread only, and it ends with the pool
        return encode_mp4(frames, 16)

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(on_one_cpu).result() == encode_mp4(frames, 16)


def _image(mode: str, fmt: str, size: tuple[int, int] = (48, 24)) -> bytes:
    """Left half one colour, right half another, in `mode`; saved as `fmt`."""
    rgba = Image.new("RGBA", size, (200, 30, 30, 255))
    rgba.paste((30, 30, 200, 255), (size[0] // 2, 0, size[0], size[1]))
    img = rgba.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else rgba.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("mode", "fmt"), [
    ("RGBA", "PNG"),
    ("P", "GIF"),
    ("L", "PNG"),
    ("RGB", "WEBP"),
    ("RGB", "BMP"),
    ("RGB", "TIFF"),
    ("CMYK", "JPEG"),
])
def test_images_become_rgb_jpegs(mode: str, fmt: str) -> None:
    data = _image(mode, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    out = Image.open(io.BytesIO(normalize_image(data)))
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (48, 24))
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)
    assert np.abs(np.asarray(out, dtype=int) - expected).mean() < 4


def test_transparency_is_flattened_onto_white() -> None:
    img = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    img.paste((0, 200, 0, 255), (0, 0, 16, 16))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = np.asarray(Image.open(io.BytesIO(normalize_image(buf.getvalue()))), dtype=int)
    assert np.abs(out[4:12, 20:28] - 255).max() < 4  # transparent: white, not the black stored under it
    assert np.abs(out[4:12, 4:12] - (0, 200, 0)).max() < 8


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64), (8, 1)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    out = np.asarray(Image.open(io.BytesIO(normalize_image(buf.getvalue()))), dtype=int)[..., 0]
    assert np.abs(out[4] - ramp[4] / 257).max() < 6


def test_exif_orientation_is_applied() -> None:
    # Stored 48x24, red on the left; orientation 6 means "rotate 90 degrees clockwise to display".
    img = Image.open(io.BytesIO(_image("RGB", "PNG"))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    out = Image.open(io.BytesIO(normalize_image(buf.getvalue())))
    assert out.size == (24, 48)
    pixels = np.asarray(out, dtype=int)
    assert pixels[8, 12, 0] > 150 > pixels[8, 12, 2]  # top: red
    assert pixels[40, 12, 2] > 150 > pixels[40, 12, 0]  # bottom: blue
    assert 0x0112 not in out.getexif()


def test_resample_30_to_16_fps_keeps_duration_and_picks_nearest_frames() -> None:
    frames = np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1)  # each frame holds its own index
    picked = resample_frames(frames, 30, 16)[:, 0, 0, 0]
    assert len(picked) / 16 == len(frames) / 30
    # output time j/16 s, source time i/30 s: i = round(j * 30 / 16), halves rounding up
    assert picked.tolist() == [0, 2, 4, 6, 8, 9, 11, 13, 15, 17, 19, 21, 23, 24, 26, 28]


@pytest.mark.parametrize(("count", "src", "dst", "expected"), [
    (81, 30, 16, 43),
    (16, 16, 30, 30),
    (49, 24, 16, 33),
    (10, 29.97, 16, 5),
    (1, 30, 8, 1),
])
def test_resample_is_nearest_in_time(count: int, src: float, dst: float, expected: int) -> None:
    frames = np.arange(count, dtype=np.int32).reshape(count, 1, 1, 1)
    picked = resample_frames(frames, src, dst)[:, 0, 0, 0]
    assert len(picked) == expected
    for j, i in enumerate(picked):
        if j / dst <= (count - 1) / src:  # past the last frame, the last frame is the nearest
            assert abs(i / src - j / dst) <= 0.5 / src + 1e-9


def test_resample_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        resample_frames(np.zeros((4, 1, 1, 3), np.uint8), 0, 16)


@pytest.mark.parametrize(("container", "codec", "name"), [
    ("mp4", "libx264", "h264"),
    ("mov", "libx264", "h264"),
    ("mkv", "libx264", "h264"),  # no frame count in the container: counted by decoding
    ("avi", "mpeg4", "mpeg4"),
    ("webm", "libvpx", "vp8"),
])
def test_probe_video(container: str, codec: str, name: str) -> None:
    info = probe_video(media_file(frames=9, width=64, height=32, fps=16, container=container, codec=codec))
    assert info == VideoInfo(width=64, height=32, frames=9, fps=16.0, duration_s=0.5625, has_audio=False,
                             codec=name, container=container)
    assert probe_video(media_file(frames=12, fps=24, audio_s=0.5, container=container, codec=codec)).has_audio


@pytest.mark.parametrize("junk", [b"", b"\x00" * 1000, b"%PDF-1.4 not media", media_file()[:200]])
def test_junk_is_a_media_error(junk: bytes) -> None:
    for read in (probe_video, normalize_video, normalize_image):
        with pytest.raises(MediaError):
            read(junk)


def test_audio_only_file_is_not_a_video() -> None:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    for read in (probe_video, normalize_video):
        with pytest.raises(MediaError):
            read(buf.getvalue())


@pytest.mark.parametrize("size", [(5000, 5000), (50_000, 50_000)])  # over our bound; and over Pillow's too
def test_an_image_too_large_is_refused_from_its_header(size: tuple[int, int]) -> None:
    """A PNG claiming more pixels than allowed is refused before a pixel is decoded, as a media error (a 4xx)."""
    for read in (decode_image, normalize_image):
        with pytest.raises(MediaTooLarge, match="pixels"):
            read(png_header(*size))
