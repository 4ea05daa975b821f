"""A job's outputs: what the encoder makes, how each is recorded on the job, and where it can be fetched.

Every asset is written to the local directory first, so a failed object-store upload never loses it; with
S3 configured it is then copied to the bucket under the same key and served from there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deployments.storage import LocalStorage, S3Config, S3Storage, StorageError

log = logging.getLogger("ray.serve")
CHUNK_BYTES = 1 << 20

MEDIA_TYPES = {"mp4": "video/mp4", "webp": "image/webp", "png": "image/png", "jpg": "image/jpeg",
               "zip": "application/zip"}
# The URL path of each job kind's content endpoint, served by the HTTP ingress.
CONTENT_PATHS = {"video": "v1/videos", "image": "v1/images", "batch": "v1/images/batches"}


@dataclass
class Encoded:
    """One deliverable as the encoder made it, before it is stored."""

    name: str
    type: str  # "video", "image", "thumbnail" or "archive"
    format: str  # a key of MEDIA_TYPES
    data: bytes
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: float | None = None
    duration: float | None = None
    thumbnail: str | None = None  # the name of this asset's thumbnail asset

    def record(self, key: str) -> dict[str, Any]:
        """The asset as the job keeps it: everything but the bytes."""
        return dict(name=self.name, type=self.type, format=self.format, key=key, width=self.width,
                    height=self.height, frames=self.frames, fps=self.fps, duration=self.duration,
                    thumbnail=self.thumbnail, file_size_bytes=len(self.data), remote=False)


class AssetLinks:
    """Where clients fetch assets: the bucket's URL once uploaded, else this service's content endpoint.

    Needs no disk, so every replica that shows a job (Gateway, FlowRunner) can run on any node.
    """

    def __init__(self, s3: S3Config | None = None) -> None:
        # Presigning is local signing: no request, and no bucket creation (that is the writer's job).
        self.remote = S3Storage(s3.model_copy(update={"create_bucket": False})) if s3 is not None else None

    def url(self, kind: str, job_id: str, record: dict[str, Any], base: str) -> str:
        if record["remote"] and self.remote is not None and (url := self.remote.url(record["key"])):
            return url
        return f"{base.rstrip('/')}/{CONTENT_PATHS[kind]}/{job_id}/content?variant={record['name']}"

    def views(self, kind: str, job_id: str, records: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
        """The assets as clients see them: with URLs, their thumbnails' URLs, no storage internals."""
        urls = {r["name"]: self.url(kind, job_id, r, base) for r in records}
        return [dict(name=r["name"], type=r["type"], format=r["format"], url=urls[r["name"]],
                     thumbnail_url=urls.get(r["thumbnail"]) if r["thumbnail"] else None, width=r["width"],
                     height=r["height"], frames=r["frames"], fps=r["fps"], duration=r["duration"],
                     file_size_bytes=r["file_size_bytes"])
                for r in records]


class AssetStore:
    """Local copies always, object-store copies when `s3` is configured: the Uploader's, and only its."""

    def __init__(self, root: str, s3: S3Config | None = None) -> None:
        self.local = LocalStorage(root)
        self.remote = S3Storage(s3) if s3 is not None else None

    def save(self, prefix: str, encoded: list[Encoded]) -> list[dict[str, Any]]:
        records = []
        for item in encoded:
            key = f"{prefix}{item.name}.{item.format}"
            self.local.put(key, item.data, MEDIA_TYPES[item.format])
            records.append(item.record(key))
        return records

    def push(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Copy every asset not yet in the bucket there; returns the records and the upload's status."""
        if self.remote is None:
            return records, None
        pushed = []
        for record in records:
            if not record["remote"]:
                try:
                    self.remote.put(record["key"], self.local.get(record["key"]), MEDIA_TYPES[record["format"]])
                except (StorageError, OSError) as exc:
                    log.warning("upload of %s failed: %s", record["key"], exc)
                    return pushed + records[len(pushed):], {"status": "failed", "error": str(exc)[:500]}
                record = {**record, "remote": True}
            pushed.append(record)
        return pushed, {"status": "completed", "error": None}

    def chunks(self, key: str, start: int, stop: int, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Bytes [start, stop) of a local copy, in pieces, so a large video is never whole in memory."""
        with self.local.open(key) as f:
            f.seek(start)
            while start < stop and (chunk := f.read(min(size, stop - start))):
                start += len(chunk)
                yield chunk
