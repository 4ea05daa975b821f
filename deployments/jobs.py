"""JobTracker: the one writer of the job store, reachable from every deployment through a handle.

It runs on the head node, next to the SQLite file it owns, so a multi-node cluster needs no shared disk.

It keeps records; it does not run jobs. A flow runner replica creates a job here with itself as the owner and
ends it here; generators report every denoising step and learn from the answer whether to go on, which is
how a cancel on any ingress replica stops a running job.

A job's end has one owner, this tracker: `finish` records it (the runner's end, or the sweep's for a job whose
runner is gone) and does what follows, once: the end webhook (`Webhooks`) and, for a job deleted while it ran, the
removal of its files and record (`remove`, the one removal: a DELETE and retention use it too).

The tracker is the store's facade; its background duties are parts of their own, each readable alone: the orphan
sweep (`deployments/sweep.py`), the webhook delivery pool (`deployments/webhooks.py`), the gauges
(`deployments/metrics.py:JobGauges`) and retention (`deployments/retention.py:Reaper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.assets import AssetLinks
from deployments.changes import QUEUE, Changes
from deployments.jobstore import SQLiteJobStore
from deployments.metrics import JobGauges, JobMetrics
from deployments.retention import Reaper
from deployments.storage import ON_HEAD_NODE, S3Config
from deployments.sweep import SWEEP_INTERVAL_S, OrphanSweep
from deployments.webhooks import Webhooks
from domain.errors import QueueFull
from domain.records import Idempotency, Job, JobStatus, Session, Upload

log = logging.getLogger("ray.serve")

SESSION_VIEW_LIMIT = 100  # GET /v1/sessions/{id} shows the newest 100 jobs and the newest 100 uploads
FILES_TIMEOUT_S = 300.0  # one call to the Uploader to delete files
WATCH_S = 30.0  # the longest a watch waits for a change before it answers with the job unchanged


class UploaderFiles:
    """The Uploader's deletions through its handle, called from the tracker's threads (never its event loop)."""

    def __init__(self, uploader: DeploymentHandle) -> None:
        self._uploader = uploader

    def delete(self, records: list[dict[str, Any]]) -> list[str]:
        return self._uploader.delete.remote(records).result(timeout_s=FILES_TIMEOUT_S)

    def delete_remote(self, keys: list[str]) -> list[str]:
        return self._uploader.delete_remote.remote(keys).result(timeout_s=FILES_TIMEOUT_S)

    def prune(self, prefix: str) -> None:
        self._uploader.prune.remote(prefix).result(timeout_s=FILES_TIMEOUT_S)


@serve.deployment(num_replicas=1, max_ongoing_requests=1000,
                  ray_actor_options={"num_cpus": 0, "resources": ON_HEAD_NODE})
class JobTracker:
    def __init__(self, db_path: str, uploader: DeploymentHandle, retention_days: float | None = None,
                 retention_sweep_s: float = 3600.0, notifier: DeploymentHandle | None = None,
                 s3: S3Config | None = None, public_url: str = "", sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._changes = Changes()  # SSE listeners' watches, woken by every change the store makes
        self._store = SQLiteJobStore(db_path, on_change=lambda job_id, moved: self._changes.signal(
            *((job_id, QUEUE) if moved else (job_id,))))
        # Replicas of one job report concurrently (a batch's images); read-modify-writes take turns.
        self._lock = threading.Lock()
        self._metrics = JobMetrics()
        self._gauges = JobGauges(self._metrics.active, self._store.active_counts)
        self._webhooks = Webhooks(self._store, notifier, AssetLinks(s3), public_url)
        self._reaper = Reaper(self._store, UploaderFiles(uploader), lambda job_id: self.cancel(job_id, delete=True),
                              retention_days)
        self._sweep = OrphanSweep(self._store, lambda job_id, status, error: self.finish(job_id, status, error=error),
                                  self._webhooks)
        self._sweep.start(sweep_interval_s)
        self._gauges.refresh()
        self._gauges.start()
        self._reaper.start(retention_sweep_s)

    def __del__(self) -> Coroutine[Any, Any, None] | None:
        """Serve's graceful shutdown (a redeploy) awaits what this returns: the webhooks on their way. The sweep stops
        first (its successor's takes over), so none it starts is missed. Not `async def`, so the garbage
        collector's call makes no coroutine."""
        if not hasattr(self, "_sweep"):
            return None  # __init__ never got this far
        self._sweep.close()
        return self._webhooks.drain()

    def create(self, jobs: list[Job], max_active: int, max_per_key: int | None = None,
               idempotency: Idempotency | None = None) -> list[Job] | None:
        """Admit all of `jobs` (one model's and one key's, each with its owner set) or none: QueueFull when they
        would make more than `max_active` of the model's, or `max_per_key` of the key's, queued or running.

        Returns None once admitted, or the jobs an earlier create made under the same `idempotency` key and body
        (then nothing is admitted; KeyReused if the body differs)."""
        refused = self._store.create(jobs, max_active, max_per_key, idempotency)
        if isinstance(refused, list):
            return refused
        if refused is not None:
            more = f"{len(jobs)} more jobs" if len(jobs) > 1 else "another job"
            limit, whose = (max_active, jobs[0].model) if refused == "model" else (max_per_key, "this API key")
            raise QueueFull(f"{whose} has no room for {more}: at most {limit} queued or running")
        for job in jobs:
            self._metrics.created.inc(1, {"model": job.model, "kind": job.kind})
        self._gauges.refresh()
        return None

    def get(self, job_id: str) -> Job | None:
        return self._store.get(job_id)

    def list(self, kind: str, after: str | None, limit: int, order: str,
             key_id: str | None = None) -> tuple[list[Job], bool]:
        return self._store.list(kind=kind, after=after, limit=limit, order=order, key_id=key_id)

    async def watch(self, job_id: str, version: int, position: int | None = None,
                    timeout_s: float = WATCH_S) -> tuple[Job | None, int | None]:
        """The job and its queue position once either differs from what the caller last saw (`version`,
        `position`), or as they stand after `timeout_s`; (None, None) once the job is gone.

        Pushed, not polled: the call waits on the store's change signal, so a watch costs nothing between changes.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._changes.waiting(job_id, QUEUE) as changed:
                job = self._store.get(job_id)
                queued = job is not None and job.status is JobStatus.QUEUED
                now = self._store.queue_position(job_id) if queued else None
                left = deadline - time.monotonic()
                if job is None or job.version != version or now != position or left <= 0:
                    return job, now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)

    async def cancelled(self, job_id: str) -> bool:
        """Answers once the job is asked to stop (cancelled, deleted, ended or gone): True. A running generation
        keeps one such call open, so a cancel reaches it pushed, and its steps never wait on a report."""
        while True:
            with self._changes.waiting(job_id) as changed:
                job = self._store.get(job_id)
                if job is None or job.cancel_requested or job.status.terminal:
                    return True
                await changed.wait()

    def watchers(self) -> int:
        """Watches waiting now: one per job per gateway replica with listeners, however many listen."""
        return self._changes.waiting_on(QUEUE)  # every watch waits on the queue too; nothing else does

    def step(self, job_id: str, done: int, total: int, segment: int = 0) -> bool:
        """Record that `done` of `total` steps of generation `segment` are finished; False means: stop now.

        Steps that run after a cancel was asked for are recorded too, so `step` shows how far a job really got.
        """
        with self._lock:
            job = self._store.get(job_id)
            if job is None or job.status.terminal or (job.cancel_requested and job.status is JobStatus.QUEUED):
                return False  # ended, or cancelled before it started: it never starts
            # reports are not awaited, so two may arrive out of order: a segment's count only grows
            steps = {**job.segment_steps, str(segment): max(done, job.segment_steps.get(str(segment), 0))}
            step = sum(steps.values())
            fields: dict = dict(segment_steps=steps, step=step,
                                progress=min(99, 100 * step // max(job.total_steps, total, 1)))
            started = job.status is JobStatus.QUEUED
            if started:
                fields.update(status=JobStatus.IN_PROGRESS, started_at=time.time())
            self._store.update(job_id, **fields)
        if started:
            self._gauges.refresh()
        return not job.cancel_requested

    def stage(self, job_id: str, kind: str) -> bool:
        """Record that stage `kind` starts; False means the job was cancelled or ended: stop here."""
        with self._lock:
            job = self._store.get(job_id)
            if job is None or job.cancel_requested or job.status.terminal:
                return False
            self._store.update(job_id, stage=kind)
            return True

    def gpu_peak(self, job_id: str, megabytes: int) -> None:
        """A generation's peak GPU memory: the job keeps the largest of its generations'."""
        with self._lock:
            job = self._store.get(job_id)
            if job is not None and megabytes > (job.gpu_memory_peak_mb or 0):
                self._store.update(job_id, even_if_ended=True, gpu_memory_peak_mb=megabytes)

    def finish(
        self, job_id: str, status: JobStatus, assets: list[dict] | None = None,
        error: tuple[str, str] | None = None, upload: dict | None = None,
    ) -> Job | None:
        """Record a job's end, and do what follows it: the end webhook goes to the delivery pool, and a job whose
        deletion was asked for while it ran is removed with its files (`remove`). The runner's end and the sweep's
        come here alike; a job that has already ended is returned as it stands, and nothing follows twice."""
        now = time.time()
        fields: dict = dict(status=status, completed_at=now, stage=None, expires_at=self._reaper.expires_at(now))
        if status is JobStatus.COMPLETED:
            fields.update(progress=100, assets=assets or [], upload=upload)
        if error is not None:
            fields.update(error_code=error[0], error_message=error[1])
        with self._lock:
            job = self._store.get(job_id)
            if job is None or job.status.terminal:
                return job
            job = self._store.update(job_id, **fields)
        assert job is not None  # it was active under the lock, and only `finish` ends a job
        self._metrics.finished.inc(1, {"model": job.model, "kind": job.kind, "status": status.value})
        self._gauges.refresh()
        self._webhooks.send(job_id)  # the event is built now, before a deleted job's record goes
        if job.delete_requested:
            self._reaper.remove(job)
        return job

    def annotate(self, job_id: str, **fields: Any) -> Job | None:
        """Record what happens after a job ends: an upload retried, a prompt enhanced."""
        return self._store.update(job_id, even_if_ended=True, **fields)

    def cancel(self, job_id: str, delete: bool = False) -> Job | None:
        """Ask a queued or running job to stop (the generator sees it at its next step); with `delete`, its end
        removes it (`finish`), and clients no longer see it."""
        with self._lock:
            job = self._store.get(job_id)
            if job is None or job.status.terminal:
                return job
            fields: dict[str, Any] = dict(delete_requested=job.delete_requested or delete)
            if not job.cancel_requested:
                fields.update(cancel_requested=True, cancel_step=job.step)
            return self._store.update(job_id, **fields)

    def remove(self, job_id: str) -> None:
        """Remove a job with its files, the one way: an ended job now (the Uploader deletes its assets, bucket copies
        it could not delete are retried by the retention sweep, the record goes); a queued or running one is
        cancelled with `delete`, and its end removes it. A DELETE comes here; a job deleted while it ran (`finish`),
        a session's DELETE and retention go to the same `Reaper.remove`. Blocks on the Uploader: Serve runs this
        sync method in a thread, never on the replica's event loop."""
        job = self._store.get(job_id)
        if job is not None:
            self._reaper.remove(job)

    def queue(self) -> dict[str, dict[str, int]]:
        """Per model: jobs queued (waiting for a replica) and in progress."""
        counts = self._store.active_counts()
        return {model: {"queued": counts.get((model, JobStatus.QUEUED), 0),
                        "in_progress": counts.get((model, JobStatus.IN_PROGRESS), 0)}
                for model in {m for m, _ in counts}}

    def queue_position(self, job_id: str) -> int | None:
        return self._store.queue_position(job_id)

    # --- sessions -------------------------------------------------------------------------------

    def create_session(self, session: Session) -> None:
        self._store.create_session(session)

    def get_session(self, session_id: str) -> tuple[Session, list[Upload], list[Job]] | None:
        """The session with its newest SESSION_VIEW_LIMIT uploads and jobs; None once its DELETE began."""
        session = self._store.get_session(session_id)
        if session is None or session.deleting:
            return None
        return (session, self._store.newest_uploads(session_id, SESSION_VIEW_LIMIT),
                self._store.newest_in_session(session_id, SESSION_VIEW_LIMIT))

    def delete_session(self, session_id: str) -> None:
        """Remove the session with its uploads and jobs (running ones are stopped, then removed by their owner),
        and their files, on disk and in the bucket."""
        self._reaper.remove_session(session_id)

    def add_upload(self, upload: Upload) -> None:
        self._store.add_upload(upload)

    def upload(self, session_id: str, upload_id: str) -> Upload | None:
        upload = self._store.get_upload(upload_id)
        return upload if upload is not None and upload.session_id == session_id else None
