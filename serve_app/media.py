"""Media resolution: a request's files, data URLs and session upload ids become decoded arrays; a session upload
becomes a normalised file (video: H.264 MP4, image: RGB JPEG) with its record."""

from __future__ import annotations

import asyncio
import base64
import binascii

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle

from deployments.assets import MEDIA_TYPES
from deployments.outbound import FetchTooLarge, OutboundError, URLRefused, check_url, fetch, guarded_client
from deployments.storage import upload_key
from domain.records import Upload
from pipelines.bounds import MediaBounds, MediaOutOfBounds
from pipelines.video import (
    MediaError,
    decode_image,
    decode_video,
    normalize_image,
    normalize_video,
    probe_video,
)
from serve_app.config import AppConfig
from serve_app.errors import APIError
from serve_app.fields import Media
from serve_app.limits import media_bounds
from serve_app.schemas import MEDIA_FIELDS

URL_SCHEMES = ("https://", "http://")


def outbound_error(exc: OutboundError, param: str) -> APIError:
    """A refused or failed call out as the 4xx naming the field that gave the URL."""
    if isinstance(exc, URLRefused):
        return APIError(400, f"{param}: {exc.reason}", param=param, code=exc.code)
    if isinstance(exc, FetchTooLarge):
        return APIError(413, f"{param}: the file at the URL is {exc.reason}", param=param, code=exc.code)
    return APIError(400, f"{param}: could not fetch the URL: {exc.reason}", param=param, code=exc.code)


async def check_webhook(url: object | None, allow_private: bool) -> None:
    """Refuse at create a webhook_url the Notifier would refuse at delivery (it checks again, then pins)."""
    if url is not None:
        try:
            await check_url(str(url), allow_private=allow_private)
        except OutboundError as exc:
            raise outbound_error(exc, "webhook_url") from exc


def data_url_bytes(value: str, param: str) -> bytes:
    if not value.startswith("data:"):
        raise APIError(400, f"{param} must be an uploaded file, a session upload id, a base64 data URL "
                            "(data:image/png;base64,...) or an https:// URL", param=param, code="invalid_url")
    try:
        header, payload = value.split(",", 1)
        if not header.endswith(";base64"):
            raise ValueError("not base64")
        return base64.b64decode(payload, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise APIError(400, f"{param} is not a valid base64 data URL", param=param, code="invalid_url") from exc


def decode_media(raw: dict[str, bytes], bounds: MediaBounds) -> Media:
    """Decode whichever of the media fields were sent."""
    media = Media()
    for param, data in raw.items():
        try:
            match param:
                case "input_reference":
                    media.image = decode_image(data, bounds)
                case "last_image":
                    media.last_image = decode_image(data, bounds)
                case "reference_image":
                    media.reference_image = decode_image(data, bounds)
                case "video":
                    media.video, media.video_fps = decode_video(data, bounds)
                    media.video_file = data
                case "mask":
                    media.mask, media.mask_fps = decode_video(data, bounds)
                case "pose_video":
                    media.pose_video, media.pose_fps = decode_video(data, bounds)
                case "face_video":
                    media.face_video, media.face_fps = decode_video(data, bounds)
        except MediaError as exc:
            raise APIError(422, f"{param}: {exc}", param=param, code="invalid_media") from exc
    return media


def normalize_upload(session_id: str, upload_id: str, data: bytes, filename: str,
                     bounds: MediaBounds) -> tuple[Upload, bytes]:
    """A session upload as it is kept: an image as RGB JPEG, a video as H.264 MP4 with what it holds."""
    try:
        image = normalize_image(data, bounds)
    except MediaOutOfBounds as exc:  # an image, and outside the bounds: no use trying it as a video
        raise APIError(422, f"file: {exc}", param="file", code="invalid_media") from exc
    except MediaError:
        image = None
    try:
        if image is not None:
            kind, ext, stored, info = "image", "jpg", image, {}
        else:
            kind, ext, stored = "video", "mp4", normalize_video(data, bounds)
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
    """Finds a request's media wherever it was sent: a file in the body, a data URL, a session's upload, or a URL
    (fetched on the event loop through the outbound guard, one client per replica; decoding runs in a thread)."""

    def __init__(self, tracker: DeploymentHandle, uploader: DeploymentHandle, config: AppConfig) -> None:
        self._tracker = tracker
        self._uploader = uploader
        self._bounds = media_bounds(config.limits)
        self._urls = config.media_urls
        self._client = guarded_client(allow_private=config.media_urls.private_allowed(),
                                      allow_http=config.media_urls.allow_http, timeout_s=config.media_urls.timeout_s)

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
            elif value.startswith(URL_SCHEMES):
                files[name] = await self._fetch(value, name)
            else:
                files[name] = data_url_bytes(value, name)
        return await asyncio.to_thread(decode_media, files, self._bounds)

    async def _fetch(self, url: str, param: str) -> bytes:
        if not self._urls.enabled:
            raise APIError(400, f"{param}: this server does not fetch media URLs; upload the file or send a data URL",
                           param=param, code="invalid_url")
        try:
            return await fetch(self._client, url, max_bytes=self._urls.max_mb * 2**20, timeout_s=self._urls.timeout_s)
        except OutboundError as exc:
            raise outbound_error(exc, param) from exc

    async def _session_file(self, session_id: str | None, upload_id: str, param: str) -> bytes:
        if session_id is None:
            raise APIError(400, f"{param} names an upload; send the session_id it was uploaded to",
                           param="session_id", code="missing_input")
        upload: Upload | None = await self._tracker.upload.remote(session_id, upload_id)
        if upload is None:
            raise APIError(404, f"session {session_id} has no upload {upload_id!r}", param=param, code="not_found")
        return await self._uploader.get.remote(upload.key)
