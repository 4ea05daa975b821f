"""Serving a job's stored assets: whole or by byte range, streamed from the Uploader that owns the files."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import Response, StreamingResponse
from ray.serve.handle import DeploymentHandle

from deployments.assets import MEDIA_TYPES
from domain.records import Job, JobStatus
from serve_app.errors import APIError


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The span [start, stop) that a `Range: bytes=a-b` header asks for, or None for the whole file.

    Video players seek with it (Safari will not play an MP4 without it). Several ranges in one header are
    answered with the whole file, as RFC 9110 allows.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header.removeprefix("bytes=").strip().partition("-")
    try:
        if first:
            start, stop = int(first), min(int(last) + 1, size) if last else size
        else:  # a suffix: the last N bytes
            start, stop = max(size - int(last), 0), size
    except ValueError:
        return None
    if start >= size or stop <= start:
        raise APIError(416, f"range {header!r} is outside the {size} bytes of this asset", code="invalid_range",
                       headers={"Content-Range": f"bytes */{size}"})
    return start, stop


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def asset_response(uploader: DeploymentHandle, job: Job, name: str, range_header: str | None) -> Response:
    """Asset `name` of a completed job (`video` means the main video: `combined` for a long one)."""
    if job.status is not JobStatus.COMPLETED:
        raise APIError(409, f"{job.id} is {job.status.value}; content is ready once it is completed",
                       code="not_ready")
    names = [name, "combined"] if name == "video" else [name]
    record = next((a for n in names for a in job.assets if a["name"] == n), None)
    if record is None:
        have = ", ".join(a["name"] for a in job.assets)
        raise APIError(404, f"{job.id} has no {name}; it has {have}", param="variant", code="not_found")
    size = record["file_size_bytes"]
    span = byte_range(range_header, size)
    start, stop = span or (0, size)
    chunks = uploader.options(stream=True).read.remote(record["key"], start, stop)
    try:
        first = await anext(chunks, b"")
    except FileNotFoundError as exc:
        raise APIError(404, f"{record['name']} of {job.id} is no longer stored", param="variant",
                       code="not_found") from exc
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(stop - start),
               "Content-Disposition": f'attachment; filename="{job.id}-{record["name"]}.{record["format"]}"'}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return StreamingResponse(_prepend(first, chunks), status_code=206 if span else 200,
                             media_type=MEDIA_TYPES[record["format"]], headers=headers)
