"""Webhooks: the one path that sends a job's end webhook, from the JobTracker's delivery pool.

Why the tracker and not the flow runner: the tracker records the end (`JobTracker.finish`, the runner's and the
orphan sweep's alike) and hands the webhook to this pool in the same call, in the same process that records the
delivery. A runner that dies after its job's end therefore loses nothing, and no other process ever sends the
event, so there is nothing to race with. The end webhook is sent once per job: `send` skips a job whose delivery is
on its way or recorded (`Job.webhook`). A delivery that raised (the Notifier away) records nothing, and the
orphan sweep sends it again, as it sends every ended job with no delivery recorded: what a tracker that died between
the end and the record leaves. That one duplicate (a delivery that reached the receiver, its record lost with the
tracker) carries the same event id (`job_event`: per job and outcome), which receivers drop as such.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from deployments.assets import AssetLinks
from deployments.jobstore import SQLiteJobStore
from domain.views import job_event

log = logging.getLogger("ray.serve")
DELIVERY_TIMEOUT_S = 600.0  # one delivery, with the Notifier's retries and backoff
POOL_SIZE = 64  # deliveries on their way at once; each waits on the Notifier (which retries) in a thread


class Notifier(Protocol):
    """The Notifier's handle as the pool calls it: `notify.remote(url, event).result(timeout_s=...)`."""

    notify: Any


class Webhooks:
    """The delivery pool: `send(job_id)` delivers an ended job's event through the Notifier and records the
    delivery on the job; `drain()` is what a tracker shutting down awaits."""

    def __init__(self, store: SQLiteJobStore, notifier: Notifier | None, links: AssetLinks, public_url: str) -> None:
        self._store = store
        self._notifier = notifier
        self._links = links
        self._public_url = public_url
        self._pool = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="webhook")
        self._delivering: dict[str, Future] = {}  # by job id, from the hand-over until the delivery is recorded
        self._lock = threading.Lock()  # `finish` and the sweep may send one job at once: one of them delivers

    def send(self, job_id: str) -> None:
        """Deliver the end webhook of `job_id`, unless it has none, has not ended, or its delivery is on its way or
        recorded. Returns at once: the Notifier retries with backoff meanwhile."""
        if self._notifier is None:
            return
        with self._lock:
            # on its way first: a delivery leaves `_delivering` only once recorded, so a job not in it either has
            # its record in the store by now or was never sent (or its delivery raised: then it goes again)
            if job_id in self._delivering:
                return
            job = self._store.get(job_id)
            if job is None or not job.status.terminal or job.webhook_url is None or job.webhook is not None:
                return
            event = job_event(job, self._links, self._public_url)  # built now: a deleted job's record goes next
            delivery = self._pool.submit(self._deliver, job_id, job.webhook_url, event)
            self._delivering[job_id] = delivery
        delivery.add_done_callback(lambda _: self._done(job_id))  # outside the lock: it may run here at once

    def _deliver(self, job_id: str, url: str, event: dict[str, Any]) -> None:
        assert self._notifier is not None
        try:
            delivery = self._notifier.notify.remote(url, event).result(timeout_s=DELIVERY_TIMEOUT_S)
        except Exception:  # nothing recorded: the orphan sweep sends it again
            log.exception("webhook for job %s", job_id, extra={"job_id": job_id})
            return
        self._store.update(job_id, even_if_ended=True, webhook=delivery)

    def _done(self, job_id: str) -> None:
        with self._lock:
            self._delivering.pop(job_id, None)

    def on_the_way(self) -> list[str]:
        """The jobs whose delivery is on its way now."""
        with self._lock:
            return list(self._delivering)

    def drain(self) -> Coroutine[Any, Any, None] | None:
        """What a graceful shutdown awaits: every delivery on its way, those handed over meanwhile included."""
        return self._drain() if self.on_the_way() else None

    async def _drain(self) -> None:
        while True:
            with self._lock:
                pending = list(self._delivering.values())
            if not pending:
                return
            log.info("job tracker shutting down: waiting for %d webhooks", len(pending))
            await asyncio.wait([asyncio.wrap_future(d) for d in pending])
