"""Reading media from a request: uploaded files in multipart, data URLs in JSON."""

from __future__ import annotations

import base64
import binascii

from pipelines.video import MediaError, decode_image, decode_video
from serve_app.errors import APIError
from serve_app.router import Media


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


def decode_media(raw: dict[str, bytes]) -> Media:
    """Decode whichever of input_reference, last_image, reference_image, video and mask were sent."""
    media = Media()
    for param, data in raw.items():
        try:
            match param:
                case "input_reference":
                    media.image = decode_image(data)
                case "last_image":
                    media.last_image = decode_image(data)
                case "reference_image":
                    media.reference_image = decode_image(data)
                case "video":
                    media.video, media.video_fps = decode_video(data)
                    media.video_file = data
                case "mask":
                    media.mask, media.mask_fps = decode_video(data)
        except MediaError as exc:
            raise APIError(422, f"{param}: {exc}", param=param, code="invalid_media") from exc
    return media
