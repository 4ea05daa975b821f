"""Removing records with their files: a job (`Reaper.remove`, behind `JobTracker.remove`: a DELETE, the end of a job
deleted while it ran, an expiry), a DELETE of a session, and the retention sweep that expires old records.

Free of Ray: the JobTracker runs it with the Uploader's handle behind `Files`, the tests with the files
themselves. A bucket copy that cannot be deleted is kept in the store's pending deletions and retried on every
sweep until it goes, so nothing is orphaned silently. The sweep runs in a thread of its own (`start`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from deployments.jobstore import PAGE, SQLiteJobStore
from deployments.periodic import every
from deployments.storage import session_prefix
from domain.records import Job, Upload

log = logging.getLogger("ray.serve")
DAY_S = 86400.0


def _batched(items: Iterable[Upload], n: int) -> Iterator[list[Upload]]:
    """`items` in lists of `n` (itertools.batched needs Python 3.12)."""
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


class Files(Protocol):
    """What the Uploader deletes: each returns the bucket keys it could not delete."""

    def delete(self, records: list[dict[str, Any]]) -> list[str]: ...
    def delete_remote(self, keys: list[str]) -> list[str]: ...
    def prune(self, prefix: str) -> None: ...


@dataclass
class Swept:
    """What one sweep removed, and the bucket deletions still pending after it."""

    jobs: int = 0
    uploads: int = 0
    sessions: int = 0
    pending: int = 0


class Reaper:
    """Removes jobs, uploads and sessions with their files; `cancel(job_id)` stops an active job and has it removed
    once stopped (the JobTracker's `cancel(..., delete=True)`: its `finish` removes a job whose deletion was asked)."""

    def __init__(self, store: SQLiteJobStore, files: Files, cancel: Callable[[str], Job | None],
                 days: float | None = None) -> None:
        self._store = store
        self._files = files
        self._cancel = cancel
        self.days = days

    def expires_at(self, ended_at: float) -> float | None:
        """When retention removes a job that ended at `ended_at`; None: kept until deleted."""
        return None if self.days is None else ended_at + self.days * DAY_S

    def start(self, interval_s: float) -> None:
        """Sweep every `interval_s`, in a thread of its own."""
        every(interval_s, self.sweep, "retention")

    def remove(self, job: Job) -> None:
        """The one removal of a job with its files. An ended job goes now: the Uploader deletes its assets, the bucket
        copies it could not delete are kept for the sweep to retry, and the record goes. An active one is stopped
        with its deletion asked for; its end removes it through here."""
        if not job.status.terminal:
            job = self._cancel(job.id) or job
            if not job.status.terminal:
                return
        if job.assets:
            self._defer(self._files.delete(job.assets))
        self._store.delete(job.id)

    def remove_session(self, session_id: str) -> None:
        """A session with every job and upload in it. The session is gone for clients at once; if this stops
        half-way, the next sweep finishes it."""
        session = self._store.get_session(session_id)
        if session is None:
            return
        if not session.deleting:
            session.deleting = True
            self._store.update_session(session)
        self._remove_contents(session_id)

    def _remove_contents(self, session_id: str) -> None:
        active = False
        for job in self._store.jobs_in_session(session_id):  # paged by seq: removing rows as it goes is safe
            self.remove(job)
            active = active or not job.status.terminal
        self._remove_uploads(self._store.uploads(session_id))
        if not active:  # a running job's owner removes it, with its files; the next sweep removes the session
            self._files.prune(session_prefix(session_id))
            self._store.delete_session(session_id)

    def _remove_uploads(self, uploads: Iterable[Upload]) -> int:
        """Remove uploads (kept on local disk only) and their files, a page at a time; returns how many."""
        removed = 0
        for batch in _batched(uploads, PAGE):
            self._defer(self._files.delete([{"key": u.key, "remote": False} for u in batch]))
            self._store.delete_uploads([u.id for u in batch])
            removed += len(batch)
        return removed

    def _defer(self, failed: list[str]) -> None:
        if failed:
            log.warning("%d bucket objects could not be deleted: retrying on the next sweep", len(failed))
            self._store.defer_deletes(failed)

    def sweep(self, now: float | None = None) -> Swept:
        """Retry the pending bucket deletions, then (with `days`) remove what ended or was made before the cutoff:
        ended jobs, uploads, and sessions left empty. Active jobs are never expired."""
        swept = Swept()
        for keys in list(self._store.pending_deletes()):
            failed = self._files.delete_remote(keys)
            self._store.deleted([k for k in keys if k not in failed])
            swept.pending += len(failed)
        if swept.pending:
            log.warning("%d bucket objects still could not be deleted: retrying on the next sweep", swept.pending)
        cutoff = (now or time.time()) - self.days * DAY_S if self.days is not None else float("-inf")
        for job in self._store.expired_jobs(cutoff):
            self.remove(job)
            swept.jobs += 1
        swept.uploads = self._remove_uploads(self._store.expired_uploads(cutoff))
        for session in self._store.sessions_to_remove(cutoff):
            self._remove_contents(session.id)
            swept.sessions += 1
        if swept.jobs or swept.uploads or swept.sessions:
            log.info("retention removed %d jobs, %d uploads and %d sessions", swept.jobs, swept.uploads,
                     swept.sessions)
        return swept
