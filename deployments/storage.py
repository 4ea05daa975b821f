"""Where outputs live: one small interface, a local directory by default.

Keys are relative paths such as `videos/video_abc.mp4`; the HTTP layer serves a local file directly and
will redirect to a presigned URL for object stores.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

# The deliverables a job can have: file extension and media type, shared by the writer and the server.
ASSET_TYPES = {"video": ("mp4", "video/mp4"), "thumbnail": ("webp", "image/webp"), "image": ("png", "image/png")}


def asset_key(name: str, job_id: str) -> str:
    """Where a job's `name` asset is stored: `videos/<id>.mp4`, `thumbnails/<id>.webp`, `images/<id>.png`."""
    return f"{name}s/{job_id}.{ASSET_TYPES[name][0]}"


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def local_path(self, key: str) -> Path | None: ...
    def delete(self, key: str) -> None: ...


class LocalStorage:
    """Files under one root directory, written atomically so a reader never sees half a video."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def open_storage(kind: str, root: str) -> Storage:
    if kind == "local":
        return LocalStorage(root)
    raise ValueError(f"unknown storage kind {kind!r}")
