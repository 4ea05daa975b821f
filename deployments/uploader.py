"""Uploader: the stage that stores a job's deliverables, and the one owner of the storage root.

It writes every asset locally first and then copies it to the object store. A failed copy does not fail the
job: the local copy stays, the job says the upload failed, and `push` retries it later. Every other file
access (session uploads in, content out) comes here through a handle, so the storage root is one disk on
the head node (where the replica is placed) and every ingress replica, on any node, reaches the same files.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from ray import serve

from deployments.assets import AssetStore, Encoded
from deployments.metrics import UploadMetrics
from deployments.plan import stage
from deployments.storage import ON_HEAD_NODE, S3Config, StorageError

log = logging.getLogger("ray.serve")


class Files:
    """Deleting what the storage root and the bucket hold. A bucket copy that cannot be deleted now is returned to
    the caller, who keeps it to retry (the JobTracker's pending deletions): never dropped silently."""

    def __init__(self, store: AssetStore) -> None:
        self._store = store

    def delete(self, records: list[dict[str, Any]]) -> list[str]:
        """Delete every record's local copy and, where `remote`, its bucket copy; returns the bucket keys that
        could not be deleted. The folders left empty go too."""
        for record in records:
            self._store.local.delete(record["key"])
        for folder in {str(PurePosixPath(r["key"]).parent) for r in records}:
            self._store.local.prune(folder)
        return self.delete_remote([r["key"] for r in records if r.get("remote")])

    def prune(self, prefix: str) -> None:
        """Remove the empty folders under `prefix`: a deleted session's."""
        self._store.local.prune(prefix)

    def delete_remote(self, keys: list[str]) -> list[str]:
        """Delete bucket objects; returns those whose deletion failed (logged)."""
        failed = []
        for key in keys if self._store.remote is not None else []:
            try:
                self._store.remote.delete(key)
            except StorageError as exc:
                log.warning("could not delete %s from the bucket, kept to retry: %s", key, exc)
                failed.append(key)
        return failed


@serve.deployment(num_replicas=1, max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 0.1, "resources": ON_HEAD_NODE})
class Uploader:
    def __init__(self, root: str, s3: S3Config | None) -> None:
        self._store = AssetStore(root, s3)
        self._files = Files(self._store)
        self._metrics = UploadMetrics()

    @stage("upload")
    async def upload(self, prefix: str, *encoded: list[Encoded]) -> tuple[list[dict[str, Any]], dict | None]:
        """Store every encoded asset under `prefix`; returns the asset records and the upload's status."""
        records = await asyncio.to_thread(self._store.save, prefix, [e for batch in encoded for e in batch])
        return await self.push(records)

    async def push(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict | None]:
        """Copy to the object store the assets that are only local (again, after a failed upload)."""
        records, status = await asyncio.to_thread(self._store.push, records)
        if status is not None and status["status"] == "failed":
            self._metrics.failures.inc()
        return records, status

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Keep a client's upload (a session's source video or image)."""
        await asyncio.to_thread(self._store.local.put, key, data, content_type)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._store.local.get, key)

    def read(self, key: str, start: int, stop: int) -> Iterator[bytes]:
        """Bytes [start, stop) of a stored file, streamed in pieces (call with `stream=True`)."""
        yield from self._store.chunks(key, start, stop)

    async def delete(self, records: list[dict[str, Any]]) -> list[str]:
        """Delete a job's assets (or uploads: records with a `key`); returns the bucket keys still to delete."""
        return await asyncio.to_thread(self._files.delete, records)

    async def delete_remote(self, keys: list[str]) -> list[str]:
        """Retry bucket deletions that failed before; returns those that failed again."""
        return await asyncio.to_thread(self._files.delete_remote, keys)

    async def prune(self, prefix: str) -> None:
        """Remove the empty folders under `prefix`: a deleted session's."""
        await asyncio.to_thread(self._files.prune, prefix)
