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
_LISTED = "IFNULL(json_extract(data, '$.delete_requested'), 0) = 0"  # a job being deleted is gone for clients


@dataclass
class Job:
    """One accepted request and everything known about it; `params` and `plan` are JSON-able dicts."""

    id: str
    kind: str  # "video", "image" or "batch"
    model: str
    task: str
    prompt: str
    params: dict[str, Any]
    plan: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    session_id: str | None = None
    webhook_url: str | None = None
    owner: str | None = None  # the flow runner replica (a Ray actor) that created and runs the job
    key_id: str | None = None  # the API key that made it (its digest's prefix, never the key); None: open mode
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    stage: str | None = None  # the plan stage running now
    step: int = 0  # denoising steps done, across every generation of the plan
    total_steps: int = 0
    segment_steps: dict[str, int] = field(default_factory=dict)  # steps done per generation
    progress: int = 0
    cancel_requested: bool = False
    cancel_step: int | None = None  # the step the job had reached when cancellation was asked for
    delete_requested: bool = False  # DELETE while it ran: gone for clients now, removed once it has stopped
    error_code: str | None = None
    error_message: str | None = None
    assets: list[dict[str, Any]] = field(default_factory=list)  # deployments/assets.py:Asset records
    upload: dict[str, Any] | None = None  # the object-store upload: status, error
    webhook: dict[str, Any] | None = None  # the webhook delivery: delivered, attempts, status_code, error


@dataclass
class Session:
    """A workspace: uploads go in, jobs refer to them, and their outputs are stored under it."""

    id: str
    created_at: float = field(default_factory=time.time)
    metadata: dict[str, str] = field(default_factory=dict)
    key_id: str | None = None


@dataclass
class Upload:
    """A file uploaded into a session, normalised (video: MP4, image: RGB JPEG) and stored at `key`."""

    id: str
    session_id: str
    kind: str  # "video" or "image"
    filename: str
    key: str
    content_type: str
    size_bytes: int
    info: dict[str, Any] = field(default_factory=dict)  # width, height, frames, fps, duration_s, has_audio
    created_at: float = field(default_factory=time.time)
    key_id: str | None = None


class JobStore(Protocol):
    def create(self, jobs: list[Job], max_active: int, max_per_key: int | None = None) -> str | None: ...
    def get(self, job_id: str) -> Job | None: ...
    def list(self, *, kind: str, after: str | None, limit: int, order: str,
             key_id: str | None = None) -> tuple[list[Job], bool]: ...
    def active_counts(self) -> dict[tuple[str, str], int]: ...
    def queue_position(self, job_id: str) -> int | None: ...
    def update(self, job_id: str, *, even_if_ended: bool = False, **fields: Any) -> Job | None: ...
    def jobs_in_session(self, session_id: str) -> list[Job]: ...
    def create_session(self, session: Session) -> None: ...
    def get_session(self, session_id: str) -> Session | None: ...
    def add_upload(self, upload: Upload) -> None: ...
    def uploads(self, session_id: str) -> list[Upload]: ...
    def delete(self, job_id: str) -> None: ...
    def active(self) -> list[Job]: ...


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
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_session ON jobs (json_extract(data, '$.session_id'))")
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, data TEXT NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS uploads (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, "
            "session_id TEXT NOT NULL, data TEXT NOT NULL)"
        )

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

    def create(self, jobs: list[Job], max_active: int, max_per_key: int | None = None) -> str | None:
        """Store all of `jobs` (one model's, one key's), or none when they would make more than `max_active` of
        the model's or `max_per_key` of the key's queued or running: then what is full, "model" or "key"."""
        with self._lock:
            (active,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE model = ? AND status IN (?, ?)", (jobs[0].model, *ACTIVE)
            ).fetchone()
            if active + len(jobs) > max_active:
                return "model"
            if max_per_key is not None and jobs[0].key_id is not None:
                (mine,) = self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE json_extract(data, '$.key_id') = ? AND status IN (?, ?)",
                    (jobs[0].key_id, *ACTIVE)).fetchone()
                if mine + len(jobs) > max_per_key:
                    return "key"
            with self._db:  # one transaction: every job or none
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO jobs (id, kind, model, status, data) VALUES (?, ?, ?, ?, ?)",
                    [(j.id, j.kind, j.model, j.status, json.dumps(asdict(j))) for j in jobs],
                )
            return None

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._get(job_id)

    def list(self, *, kind: str, after: str | None, limit: int, order: str,
             key_id: str | None = None) -> tuple[list[Job], bool]:
        """A page of jobs in creation order, of one key's when `key_id` is given; `after` is the id of the last
        job of the previous page."""
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        sql = f"SELECT data FROM jobs WHERE kind = ? AND {_LISTED}"
        args: list[Any] = [kind]
        if key_id is not None:
            sql += " AND json_extract(data, '$.key_id') = ?"
            args.append(key_id)
        if after is not None:
            sql += f" AND seq {op} (SELECT seq FROM jobs WHERE id = ?)"
            args.append(after)
        sql += f" ORDER BY seq {direction} LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._decode(r[0]) for r in rows[:limit]], len(rows) > limit

    def active_counts(self) -> dict[tuple[str, str], int]:
        """Jobs queued or running, by (model, status)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT model, status, COUNT(*) FROM jobs WHERE status IN (?, ?) GROUP BY model, status", ACTIVE
            ).fetchall()
        return {(model, status): n for model, status, n in rows}

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next queued job of its model to start, 2 for the one after, ...; None once started."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs AS q, jobs AS j WHERE j.id = ? AND j.status = ? AND q.model = j.model "
                "AND q.status = ? AND q.seq <= j.seq", (job_id, JobStatus.QUEUED, JobStatus.QUEUED)
            ).fetchone()
        return row[0] or None

    def update(self, job_id: str, *, even_if_ended: bool = False, **fields: Any) -> Job | None:
        """Set `fields` unless the job has already ended; returns the job as it now stands.

        `even_if_ended` is for what happens after the end: an upload retried, a webhook delivered.
        """
        with self._lock:
            job = self._get(job_id)
            if job is not None and (even_if_ended or not job.status.terminal):
                for name, value in fields.items():
                    setattr(job, name, value)
                self._write(job)
            return job

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def jobs_in_session(self, session_id: str) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT data FROM jobs WHERE json_extract(data, '$.session_id') = ? AND {_LISTED} ORDER BY seq",
                (session_id,),
            ).fetchall()
        return [self._decode(r[0]) for r in rows]

    def create_session(self, session: Session) -> None:
        with self._lock:
            self._db.execute("INSERT INTO sessions (id, data) VALUES (?, ?)",
                             (session.id, json.dumps(asdict(session))))

    def get_session(self, session_id: str) -> Session | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return Session(**json.loads(row[0])) if row else None

    def add_upload(self, upload: Upload) -> None:
        with self._lock:
            self._db.execute("INSERT INTO uploads (id, session_id, data) VALUES (?, ?, ?)",
                             (upload.id, upload.session_id, json.dumps(asdict(upload))))

    def uploads(self, session_id: str) -> list[Upload]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM uploads WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        return [Upload(**json.loads(r[0])) for r in rows]

    def active(self) -> list[Job]:
        """Every job still queued or running."""
        with self._lock:
            rows = self._db.execute("SELECT data FROM jobs WHERE status IN (?, ?) ORDER BY seq", ACTIVE).fetchall()
        return [self._decode(r[0]) for r in rows]
