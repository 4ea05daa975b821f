"""JobTracker: the one writer of the job store, reachable from every deployment through a handle.

It runs on the head node, next to the SQLite file it owns, so a multi-node cluster needs no shared disk.

It keeps records; it does not run jobs. A flow runner replica creates a job here with itself as the owner and
ends it here; generators report every denoising step and learn from the answer whether to go on, which is
how a cancel on any ingress replica stops a running job. The tracker ends a job itself only when its owner
is gone (a crash, a restart): the sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.assets import AssetLinks
from deployments.changes import QUEUE, Changes
from deployments.jobstore import SQLiteJobStore
from deployments.metrics import JobMetrics
from deployments.retention import Reaper
from deployments.storage import ON_HEAD_NODE, S3Config
from domain.errors import QueueFull
from domain.records import ACTIVE, Idempotency, Job, JobStatus, Session, Upload
from domain.views import job_event

log = logging.getLogger("ray.serve")
SERVE_NAMESPACE = "serve"  # where Serve names its replica actors


SWEEP_INTERVAL_S = 30.0
GAUGE_INTERVAL_S = 5.0  # gauges are levels: set again and again, or Ray stops exporting them
DELIVERY_TIMEOUT_S = 600.0  # a swept job's webhook, with the Notifier's retries and backoff
SESSION_VIEW_LIMIT = 100  # GET /v1/sessions/{id} shows the newest 100 jobs and the newest 100 uploads
FILES_TIMEOUT_S = 300.0  # one call to the Uploader to delete files
WATCH_S = 30.0  # the longest a watch waits for a change before it answers with the job unchanged


def _alive(actor_name: str) -> bool:
    try:
        ray.get_actor(actor_name, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


async def _drain(deliveries: set[Future]) -> None:
    log.info("job tracker shutting down: waiting for %d webhooks", len(deliveries))
    await asyncio.wait([asyncio.wrap_future(d) for d in set(deliveries)])


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
        # Jobs the sweep fails get their webhook, as the flow runner's do: the same event, links and Notifier.
        self._notifier = notifier
        self._links = AssetLinks(s3)
        self._public_url = public_url
        self._sweep_interval_s = sweep_interval_s
        self._deliveries = ThreadPoolExecutor(max_workers=16, thread_name_prefix="webhook")
        self._delivering: dict[str, Future] = {}  # webhooks on their way, by job id
        self._sweeping = threading.Lock()
        self._closing = False  # shutting down: the next tracker's sweep takes over
        self._reaper = Reaper(self._store, UploaderFiles(uploader), lambda job_id: self.cancel(job_id, delete=True),
                              retention_days)
        # Replicas of one job report concurrently (a batch's images); read-modify-writes take turns.
        self._lock = threading.Lock()
        self._metrics = JobMetrics()
        self._models: set[str] = set()  # every model a gauge was set for, so it can go back to 0
        # Jobs whose flow runner is gone (a restart, a crash) are ended, never left hanging; jobs whose
        # runner lives on (this tracker alone was replaced, as in a redeploy) are left to it.
        self._sweep()
        threading.Thread(target=self._keep_up, daemon=True).start()
        threading.Thread(target=self._expire, args=(retention_sweep_s,), daemon=True, name="retention").start()

    def _sweep(self) -> None:
        with self._sweeping:
            if not self._closing:
                self._sweep_orphans()

    def _sweep_orphans(self) -> None:
        """Fail each queued or running job whose flow runner is gone; then send the webhook of every ended job whose
        runner is gone with none recorded (failed here, or its runner died between the end and the delivery)."""
        for job in self._store.active():
            if job.owner is not None and _alive(job.owner):
                continue
            log.warning("job %s lost its flow runner %s: failing it", job.id, job.owner, extra={"job_id": job.id})
            ended = self.finish(job.id, JobStatus.FAILED, error=(
                "interrupted", "the service lost this job's runner (a crash or a restart) before it ended; submit it "
                "again"))
            if ended is not None and ended.delete_requested:
                self._store.delete(job.id)  # it never completed, so it has no files to delete
        if self._notifier is not None:
            for job in self._store.undelivered():
                if job.id not in self._delivering and not (job.owner is not None and _alive(job.owner)):
                    self._send(job)
        self._refresh()

    def _send(self, job: Job) -> None:
        """Hand a job's webhook to a pool: the Notifier retries with backoff, and the sweep goes on meanwhile."""
        assert job.webhook_url is not None
        delivery = self._deliveries.submit(self._notify, job.id, job.webhook_url,
                                           job_event(job, self._links, self._public_url))
        self._delivering[job.id] = delivery
        delivery.add_done_callback(lambda _: self._delivering.pop(job.id, None))

    def __del__(self) -> Coroutine[Any, Any, None] | None:
        """Serve's graceful shutdown (a redeploy) awaits what this returns: the webhooks of the jobs the sweep failed
        that are still on their way. Not `async def`, so the garbage collector's call makes no coroutine."""
        if not hasattr(self, "_sweeping"):
            return None  # __init__ never got this far
        with self._sweeping:  # a sweep under way finishes first, so every delivery it starts is awaited
            self._closing = True
        return _drain(set(self._delivering.values())) if self._delivering else None

    def _notify(self, job_id: str, url: str, event: dict[str, Any]) -> None:
        """Deliver a swept job's webhook through the Notifier and record the delivery on the job."""
        assert self._notifier is not None
        try:
            delivery = self._notifier.notify.remote(url, event).result(timeout_s=DELIVERY_TIMEOUT_S)
        except Exception:
            log.exception("webhook for swept job %s", job_id, extra={"job_id": job_id})
            return
        self.annotate(job_id, webhook=delivery)

    def _keep_up(self) -> None:
        """Refresh the gauges every few seconds, and sweep every `sweep_interval_s`."""
        last_sweep = time.monotonic()
        while True:
            time.sleep(min(GAUGE_INTERVAL_S, self._sweep_interval_s))
            if time.monotonic() - last_sweep >= self._sweep_interval_s:
                last_sweep = time.monotonic()
                self._sweep()
            else:
                self._refresh()

    def _expire(self, interval_s: float) -> None:
        """Every `interval_s`: retry the pending bucket deletions and remove expired records (the Reaper)."""
        while True:
            time.sleep(interval_s)
            try:
                self._reaper.sweep()
            except Exception:  # the Uploader away, say: the next sweep tries again
                log.exception("retention sweep failed")

    def _refresh(self) -> None:
        """Set the queued / in_progress gauges of every model from the store, the one source of truth."""
        counts = self._store.active_counts()
        self._models.update(model for model, _ in counts)
        for model in self._models:
            for status in ACTIVE:
                self._metrics.active.set(counts.get((model, status), 0), {"model": model, "status": status})

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
        self._refresh()
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
            self._refresh()
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
        now = time.time()
        fields: dict = dict(status=status, completed_at=now, stage=None, expires_at=self._reaper.expires_at(now))
        if status is JobStatus.COMPLETED:
            fields.update(progress=100, assets=assets or [], upload=upload)
        if error is not None:
            fields.update(error_code=error[0], error_message=error[1])
        job = self._store.update(job_id, **fields)
        if job is not None and job.status is status:
            self._metrics.finished.inc(1, {"model": job.model, "kind": job.kind, "status": status.value})
            self._refresh()
        return job

    def annotate(self, job_id: str, **fields: Any) -> Job | None:
        """Record what happens after a job ends: an upload retried, a webhook delivered."""
        return self._store.update(job_id, even_if_ended=True, **fields)

    def cancel(self, job_id: str, delete: bool = False) -> Job | None:
        """Ask a queued or running job to stop (the generator sees it at its next step); with `delete`, its owner
        removes it once it has stopped, and clients no longer see it."""
        with self._lock:
            job = self._store.get(job_id)
            if job is None or job.status.terminal:
                return job
            fields: dict[str, Any] = dict(delete_requested=job.delete_requested or delete)
            if not job.cancel_requested:
                fields.update(cancel_requested=True, cancel_step=job.step)
            return self._store.update(job_id, **fields)

    def delete(self, job_id: str) -> None:
        self._store.delete(job_id)

    def defer_deletes(self, keys: list[str]) -> None:
        """Bucket objects a deletion could not remove: the retention sweep retries them until they go."""
        if keys:
            log.warning("%d bucket objects could not be deleted: retrying on the next sweep", len(keys))
            self._store.defer_deletes(keys)

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
