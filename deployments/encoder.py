"""VideoEncoder: the CPU stage that turns frames into deliverables (MP4 + WEBP thumbnail, or PNG).

A stage of its own so the GPU replica is free as soon as its frames are decoded.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from pipelines.video import encode_mp4, encode_png, thumbnail_webp


def _encode(frames: np.ndarray, fmt: str, fps: int) -> dict[str, bytes]:
    if fmt == "png":
        return {"image": encode_png(frames[0])}
    return {"video": encode_mp4(frames, fps), "thumbnail": thumbnail_webp(frames)}


@serve.deployment(max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.25})
class VideoEncoder:
    async def encode(self, frames: np.ndarray, format: str = "mp4", fps: int = 16) -> dict[str, bytes]:
        return await asyncio.to_thread(_encode, frames, format, fps)
