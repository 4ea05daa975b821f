"""The orphan sweep: ends the jobs whose flow runner is gone, and sends the end webhooks nobody recorded.

A job has one owner, the flow runner replica that admitted it (`Job.owner`, its Ray actor name), and its owner ends
it. A runner that dies instead (a crash, the cluster stopping, a redeploy that cut its drain short) leaves its jobs
queued or running; the sweep fails each with code `interrupted` through `JobTracker.finish`, the same call a
runner ends a job with, so the webhook and the removal of a job deleted while it ran follow as for any end. Jobs
whose runner lives on (this tracker alone was replaced) are left to it. The sweep runs when the tracker starts and
every `interval_s`; a tracker shutting down stops sweeping and leaves that to its successor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import ray

from deployments.jobstore import SQLiteJobStore
from deployments.periodic import every
from deployments.webhooks import Webhooks
from domain.records import Job, JobStatus

log = logging.getLogger("ray.serve")
SERVE_NAMESPACE = "serve"  # where Serve names its replica actors
SWEEP_INTERVAL_S = 30.0
INTERRUPTED = ("interrupted", "the service lost this job's runner (a crash or a restart) before it ended; submit it "
               "again")

Finish = Callable[[str, JobStatus, tuple[str, str]], Job | None]


def alive(actor_name: str) -> bool:
    """Whether the named replica actor still exists."""
    try:
        ray.get_actor(actor_name, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


class OrphanSweep:
    def __init__(self, store: SQLiteJobStore, finish: Finish, webhooks: Webhooks) -> None:
        self._store = store
        self._finish = finish
        self._webhooks = webhooks
        self._lock = threading.Lock()  # one sweep at a time; `close` waits for the one under way
        self._closing = False
        self._stop: threading.Event | None = None

    def start(self, interval_s: float) -> None:
        """Sweep now (jobs left by a crash end as the tracker starts), then every `interval_s`."""
        self.run()
        self._stop = every(interval_s, self.run, "orphan-sweep")

    def run(self) -> None:
        """One sweep, unless the tracker is shutting down."""
        with self._lock:
            if not self._closing:
                self._sweep()

    def close(self) -> None:
        """Stop sweeping; a sweep under way finishes first, so every delivery it hands over is drained."""
        with self._lock:
            self._closing = True
        if self._stop is not None:
            self._stop.set()

    def _sweep(self) -> None:
        for job in self._store.active():
            if job.owner is not None and alive(job.owner):
                continue
            log.warning("job %s lost its flow runner %s: failing it", job.id, job.owner, extra={"job_id": job.id})
            self._finish(job.id, JobStatus.FAILED, INTERRUPTED)
        # Every ended job with a webhook and no delivery recorded, not on its way: what a tracker that died between
        # the end and the record left, and deliveries that raised.
        for job in self._store.undelivered():
            self._webhooks.send(job.id)
