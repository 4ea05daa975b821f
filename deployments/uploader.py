"""Uploader: the stage that stores a job's deliverables, locally first and then in the object store.

A failed object-store upload does not fail the job: the local copy stays, the job says the upload failed,
and `push` retries it later.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from deployments.assets import AssetStore, Encoded
from deployments.metrics import UploadMetrics
from deployments.plan import stage
from deployments.storage import S3Config


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.1})
class Uploader:
    def __init__(self, root: str, s3: S3Config | None) -> None:
        self._store = AssetStore(root, s3, writer=True)
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
