"""JobTracker: the one writer of the job store, reachable from every deployment through a handle.

It runs on the head node, next to the SQLite file it owns, so a multi-node cluster needs no shared disk.

The ingress creates, reads and cancels jobs here; generators report every denoising step here and learn
from the answer whether to go on, which is how a DELETE on any ingress replica stops a running job.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray
from ray import serve

from deployments.jobstore import ACTIVE, Job, JobStatus, Session, SQLiteJobStore, Upload
from deployments.metrics import JobMetrics
from deployments.storage import ON_HEAD_NODE

log = logging.getLogger("ray.serve")
SERVE_NAMESPACE = "serve"  # where Serve names its replica actors


SWEEP_INTERVAL_S = 30.0
CLAIM_GRACE_S = 60.0


def _alive(actor_name: str) -> bool:
    try:
        ray.get_actor(actor_name, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


class QueueFull(Exception):
    """Too many jobs are already waiting for this model."""


@serve.deployment(num_replicas=1, max_ongoing_requests=1000,
                  ray_actor_options={"num_cpus": 0, "resources": ON_HEAD_NODE})
class JobTracker:
    def __init__(self, db_path: str) -> None:
        self._store = SQLiteJobStore(db_path)
        # Replicas of one job report concurrently (a batch's images); read-modify-writes take turns.
        self._lock = threading.Lock()
        self._metrics = JobMetrics()
        self._models: set[str] = set()  # every model a gauge was set for, so it can go back to 0
        # Jobs whose flow runner is gone (a restart, a crash) are ended, never left hanging; jobs whose
        # runner lives on (this tracker alone was replaced, as in a redeploy) are left to finish.
        self._sweep()
        self._stop = threading.Event()
        threading.Thread(target=self._sweep_every, args=(SWEEP_INTERVAL_S,), daemon=True).start()

    def _sweep(self) -> None:
        now = time.time()
        for job in self._store.active():
            if job.owner is None and now - job.created_at < CLAIM_GRACE_S:
                continue  # just accepted: its runner has not claimed it yet
            if job.owner is not None and _alive(job.owner):
                continue
            log.warning("job %s lost its flow runner %s: failing it", job.id, job.owner, extra={"job_id": job.id})
            self.finish(job.id, JobStatus.FAILED, error=(
                "interrupted", "the service restarted while this job was queued or running; submit it again"))
        self._refresh()

    def _sweep_every(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._sweep()

    def _refresh(self) -> None:
        """Set the queued / in_progress gauges of every model from the store, the one source of truth."""
        counts = self._store.active_counts()
        self._models.update(model for model, _ in counts)
        for model in self._models:
            for status in ACTIVE:
                self._metrics.active.set(counts.get((model, status), 0), {"model": model, "status": status})

    def create(self, job: Job, max_active: int) -> None:
        if self._store.count_active(job.model) >= max_active:
            raise QueueFull(f"{job.model} already has {max_active} jobs queued or running")
        self._store.create(job)
        self._metrics.created.inc(1, {"model": job.model, "kind": job.kind})
        self._refresh()

    def claim(self, job_id: str, owner: str) -> None:
        """`owner` (a flow runner replica's actor name) runs this job now."""
        self._store.update(job_id, owner=owner)

    def get(self, job_id: str) -> Job | None:
        return self._store.get(job_id)

    def list(self, kind: str, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        return self._store.list(kind=kind, after=after, limit=limit, order=order)

    def step(self, job_id: str, done: int, total: int, segment: int = 0) -> bool:
        """Record that `done` of `total` steps of generation `segment` are finished; False means: stop now."""
        with self._lock:
            job = self._store.get(job_id)
            if job is None or job.cancel_requested or job.status.terminal:
                return False
            steps = {**job.segment_steps, str(segment): done}
            step = sum(steps.values())
            fields: dict = dict(segment_steps=steps, step=step,
                                progress=min(99, 100 * step // max(job.total_steps, total, 1)))
            started = job.status is JobStatus.QUEUED
            if started:
                fields.update(status=JobStatus.IN_PROGRESS, started_at=time.time())
            self._store.update(job_id, **fields)
        if started:
            self._refresh()
        return True

    def stage(self, job_id: str, kind: str) -> bool:
        """Record that stage `kind` starts; False means the job was cancelled or ended: stop here."""
        with self._lock:
            job = self._store.get(job_id)
            if job is None or job.cancel_requested or job.status.terminal:
                return False
            self._store.update(job_id, stage=kind)
            return True

    def finish(
        self, job_id: str, status: JobStatus, assets: list[dict] | None = None,
        error: tuple[str, str] | None = None, upload: dict | None = None,
    ) -> Job | None:
        fields: dict = dict(status=status, completed_at=time.time(), stage=None)
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

    def cancel(self, job_id: str) -> Job | None:
        """Ask a queued or running job to stop; the generator sees it at its next step."""
        with self._lock:
            job = self._store.get(job_id)
            if job is None or job.status.terminal:
                return job
            return self._store.update(job_id, cancel_requested=True, cancel_step=job.step)

    def delete(self, job_id: str) -> None:
        self._store.delete(job_id)

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
        session = self._store.get_session(session_id)
        if session is None:
            return None
        return session, self._store.uploads(session_id), self._store.jobs_in_session(session_id)

    def add_upload(self, upload: Upload) -> None:
        self._store.add_upload(upload)

    def upload(self, session_id: str, upload_id: str) -> Upload | None:
        return next((u for u in self._store.uploads(session_id) if u.id == upload_id), None)
