"""Media resolution: a request's files, data URLs and session upload ids become decoded arrays; a session upload
becomes a normalised file (video: H.264 MP4, image: RGB JPEG) with its record."""

from __future__ import annotations

import asyncio
import base64
import binascii

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle

from deployments.assets import MEDIA_TYPES
from deployments.jobstore import Upload
from deployments.storage import upload_key
from pipelines.video import (
    MediaError,
    MediaTooLarge,
    decode_image,
    decode_video,
    normalize_image,
    normalize_video,
    probe_video,
)
from serve_app.errors import APIError
from serve_app.router import Media

MEDIA_FIELDS = ("input_reference", "last_image", "video", "mask", "reference_image")


def data_url_bytes(value: str, param: str) -> bytes:
    if not value.startswith("data:"):
        raise APIError(400, f"{param} must be an uploaded file or a base64 data URL (data:image/png;base64,...); "
                            "this server does not fetch remote URLs", param=param, code="invalid_url")
    try:
        header, payload = value.split(",", 1)
        if not header.endswith(";base64"):
            raise ValueError("not base64")
        return base64.b64decode(payload, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise APIError(400, f"{param} is not a valid base64 data URL", param=param, code="invalid_url") from exc


def decode_media(raw: dict[str, bytes], max_pixels: int) -> Media:
    """Decode whichever of input_reference, last_image, reference_image, video and mask were sent."""
    media = Media()
    for param, data in raw.items():
        try:
            match param:
                case "input_reference":
                    media.image = decode_image(data, max_pixels)
                case "last_image":
                    media.last_image = decode_image(data, max_pixels)
                case "reference_image":
                    media.reference_image = decode_image(data, max_pixels)
                case "video":
                    media.video, media.video_fps = decode_video(data)
                    media.video_file = data
                case "mask":
                    media.mask, media.mask_fps = decode_video(data)
        except MediaError as exc:
            raise APIError(422, f"{param}: {exc}", param=param, code="invalid_media") from exc
    return media


def normalize_upload(session_id: str, upload_id: str, data: bytes, filename: str,
                     max_pixels: int) -> tuple[Upload, bytes]:
    """A session upload as it is kept: an image as RGB JPEG, a video as H.264 MP4 with what it holds."""
    try:
        image = normalize_image(data, max_pixels)
    except MediaTooLarge as exc:  # an image, and too large: no use trying it as a video
        raise APIError(422, f"file: {exc}", param="file", code="invalid_media") from exc
    except MediaError:
        image = None
    try:
        if image is not None:
            kind, ext, stored, info = "image", "jpg", image, {}
        else:
            kind, ext, stored = "video", "mp4", normalize_video(data)
            probe = probe_video(stored)
            info = dict(width=probe.width, height=probe.height, frames=probe.frames, fps=probe.fps,
                        duration_s=probe.duration_s, has_audio=probe.has_audio)
    except MediaError as exc:
        raise APIError(422, f"file: {exc}", param="file", code="invalid_media") from exc
    upload = Upload(id=upload_id, session_id=session_id, kind=kind, filename=filename,
                    key=upload_key(session_id, upload_id, ext), content_type=MEDIA_TYPES[ext],
                    size_bytes=len(stored), info=info)
    return upload, stored


class MediaResolver:
    """Finds a request's media wherever it was sent: a file in the body, a data URL, or a session's upload."""

    def __init__(self, tracker: DeploymentHandle, uploader: DeploymentHandle, max_pixels: int) -> None:
        self._tracker = tracker
        self._uploader = uploader
        self._max_pixels = max_pixels

    async def resolve(self, body: BaseModel, raw: dict[str, bytes], session_id: str | None) -> Media:
        files = dict(raw)
        unknown = sorted(set(files) - set(MEDIA_FIELDS))
        if unknown:
            raise APIError(400, f"unexpected file field {unknown[0]!r}", param=unknown[0])
        for name in MEDIA_FIELDS:
            value = getattr(body, name)
            if isinstance(value, dict):
                value = value.get("image_url")
            if value is None or name in files:
                continue
            if value.startswith("upload_"):
                files[name] = await self._session_file(session_id, value, name)
            else:
                files[name] = data_url_bytes(value, name)
        return await asyncio.to_thread(decode_media, files, self._max_pixels)

    async def _session_file(self, session_id: str | None, upload_id: str, param: str) -> bytes:
        if session_id is None:
            raise APIError(400, f"{param} names an upload; send the session_id it was uploaded to",
                           param="session_id", code="missing_input")
        upload: Upload | None = await self._tracker.upload.remote(session_id, upload_id)
        if upload is None:
            raise APIError(404, f"session {session_id} has no upload {upload_id!r}", param=param, code="not_found")
        return await self._uploader.get.remote(upload.key)
