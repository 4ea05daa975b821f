"""The job record and where it is kept: one interface, SQLite by default (embedded, survives restarts).

States: queued -> in_progress -> completed | failed | cancelled. Terminal states are final, so a late
report from a stage can never bring a finished job back to life.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol


class JobStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE = (JobStatus.QUEUED, JobStatus.IN_PROGRESS)


@dataclass
class Job:
    """One accepted request and everything known about it; `params` and `plan` are JSON-able dicts."""

    id: str
    kind: str  # "video" or "image"
    model: str
    task: str
    prompt: str
    params: dict[str, Any]
    plan: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    step: int = 0
    total_steps: int = 0
    progress: int = 0
    cancel_requested: bool = False
    cancel_step: int | None = None  # the step the job had reached when cancellation was asked for
    error_code: str | None = None
    error_message: str | None = None
    assets: dict[str, str] = field(default_factory=dict)


class JobStore(Protocol):
    def create(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def list(self, *, kind: str, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]: ...
    def count_active(self, model: str) -> int: ...
    def update(self, job_id: str, **fields: Any) -> Job | None: ...
    def delete(self, job_id: str) -> None: ...
    def fail_active(self, code: str, message: str) -> int: ...


class SQLiteJobStore:
    """Jobs in one SQLite file (WAL mode): the record as JSON, with the columns queries filter on.

    One writer process, the JobTracker deployment; the lock serialises its threads.
    """

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, "
            "kind TEXT NOT NULL, model TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_kind_seq ON jobs (kind, seq)")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, model)")

    @staticmethod
    def _decode(data: str) -> Job:
        job = Job(**json.loads(data))
        job.status = JobStatus(job.status)
        return job

    def _write(self, job: Job) -> None:
        self._db.execute(
            "UPDATE jobs SET status = ?, data = ? WHERE id = ?", (job.status, json.dumps(asdict(job)), job.id)
        )

    def _get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._decode(row[0]) if row else None

    def create(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, model, status, data) VALUES (?, ?, ?, ?, ?)",
                (job.id, job.kind, job.model, job.status, json.dumps(asdict(job))),
            )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._get(job_id)

    def list(self, *, kind: str, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        """A page of jobs in creation order; `after` is the id of the last job of the previous page."""
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        sql = "SELECT data FROM jobs WHERE kind = ?"
        args: list[Any] = [kind]
        if after is not None:
            sql += f" AND seq {op} (SELECT seq FROM jobs WHERE id = ?)"
            args.append(after)
        sql += f" ORDER BY seq {direction} LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._decode(r[0]) for r in rows[:limit]], len(rows) > limit

    def count_active(self, model: str) -> int:
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE model = ? AND status IN (?, ?)", (model, *ACTIVE)
            ).fetchone()
        return n

    def update(self, job_id: str, **fields: Any) -> Job | None:
        """Set `fields` unless the job has already ended; returns the job as it now stands."""
        with self._lock:
            job = self._get(job_id)
            if job is not None and not job.status.terminal:
                for name, value in fields.items():
                    setattr(job, name, value)
                self._write(job)
            return job

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def fail_active(self, code: str, message: str) -> int:
        """End every job still queued or running, e.g. after a restart lost the processes running them."""
        with self._lock:
            rows = self._db.execute("SELECT data FROM jobs WHERE status IN (?, ?)", ACTIVE).fetchall()
            for (data,) in rows:
                job = self._decode(data)
                job.status, job.error_code, job.error_message = JobStatus.FAILED, code, message
                job.completed_at = time.time()
                self._write(job)
        return len(rows)
