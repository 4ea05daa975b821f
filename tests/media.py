"""Helpers to make and read real media in tests: PNG uploads, MP4s encoded and decoded with PyAV."""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image

from pipelines.video import encode_mp4


def png(width: int = 64, height: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


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
