"""VideoEncoder: the CPU stage that turns frames into deliverables: MP4s with WEBP thumbnails, PNGs, a ZIP.

A stage of its own so the GPU replica is free as soon as its frames are decoded. What to make comes from
the plan's encode stage: one output per asset, each a frame range of one of the clips it is given.
"""

from __future__ import annotations

import asyncio
import io
import zipfile

import numpy as np
from ray import serve

from deployments.assets import Encoded
from deployments.plan import Output, stage
from pipelines.video import DEFAULT_FPS, encode_mp4, encode_png, thumbnail_webp


def encode_outputs(clips: tuple[np.ndarray, ...], outputs: list[Output], audio: bytes | None) -> list[Encoded]:
    """Each output in order: an MP4 (with its WEBP thumbnail) or a PNG of a frame range, or a ZIP of outputs."""
    made: list[Encoded] = []
    for out in outputs:
        name, fmt = out.name, out.format
        if fmt == "zip":  # an archive of outputs made above, by name, stored as-is (PNG and MP4 are compressed)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
                for item in made:
                    if item.name in out.members:
                        archive.writestr(f"{item.name}.{item.format}", item.data)
            made.append(Encoded(name, "archive", "zip", buf.getvalue()))
            continue
        frames = clips[out.clip][out.start : out.stop]
        height, width = frames.shape[1:3]
        if fmt == "png":
            made.append(Encoded(name, "image", "png", encode_png(frames[0]), width, height, 1))
            continue
        fps = out.fps or DEFAULT_FPS
        thumb = out.thumbnail
        data = encode_mp4(frames, fps, audio=audio if out.audio else None)
        made.append(Encoded(name, "video", "mp4", data, width - width % 2, height - height % 2, len(frames), fps,
                            round(len(frames) / fps, 4), thumbnail=thumb))
        if thumb:
            image = thumbnail_webp(frames)
            made.append(Encoded(thumb, "thumbnail", "webp", image))
    return made


@serve.deployment(max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.25})
class VideoEncoder:
    @stage("encode")
    async def encode(self, *clips: np.ndarray, outputs: list[Output], audio: bytes | None = None
                     ) -> list[Encoded]:
        return await asyncio.to_thread(encode_outputs, clips, outputs, audio)
