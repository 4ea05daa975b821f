"""Where the records are kept: one interface, SQLite by default (embedded, survives restarts).

The records themselves are `domain/records.py`'s: a job's typed `JobParams` is kept as JSON and read back typed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from domain.errors import KeyReused
from domain.records import ACTIVE, ENDED, Idempotency, Job, JobKind, JobParams, JobStatus, Session, Upload

_LISTED = "IFNULL(json_extract(data, '$.delete_requested'), 0) = 0"  # a job being deleted is gone for clients
# Rows read under the lock at once: a page of a large read, so a generator's step report never waits long.
PAGE = 200


class JobStore(Protocol):
    def create(self, jobs: list[Job], max_active: int, max_per_key: int | None = None,
               idempotency: Idempotency | None = None) -> list[Job] | str | None: ...
    def get(self, job_id: str) -> Job | None: ...
    def list(self, *, kind: str, after: str | None, limit: int, order: str,
             key_id: str | None = None) -> tuple[list[Job], bool]: ...
    def active_counts(self) -> dict[tuple[str, str], int]: ...
    def queue_position(self, job_id: str) -> int | None: ...
    def update(self, job_id: str, *, even_if_ended: bool = False, **fields: Any) -> Job | None: ...
    def jobs_in_session(self, session_id: str) -> Iterator[Job]: ...
    def newest_in_session(self, session_id: str, limit: int) -> list[Job]: ...
    def create_session(self, session: Session) -> None: ...
    def get_session(self, session_id: str) -> Session | None: ...
    def update_session(self, session: Session) -> None: ...
    def delete_session(self, session_id: str) -> None: ...
    def add_upload(self, upload: Upload) -> None: ...
    def get_upload(self, upload_id: str) -> Upload | None: ...
    def uploads(self, session_id: str) -> Iterator[Upload]: ...
    def newest_uploads(self, session_id: str, limit: int) -> list[Upload]: ...
    def delete_uploads(self, upload_ids: list[str]) -> None: ...
    def delete(self, job_id: str) -> None: ...
    def active(self) -> Iterator[Job]: ...
    def expired_jobs(self, before: float) -> Iterator[Job]: ...
    def undelivered(self) -> Iterator[Job]: ...
    def expired_uploads(self, before: float) -> Iterator[Upload]: ...
    def sessions_to_remove(self, before: float) -> Iterator[Session]: ...
    def defer_deletes(self, keys: list[str]) -> None: ...
    def pending_deletes(self) -> Iterator[list[str]]: ...
    def deleted(self, keys: list[str]) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, kind TEXT NOT NULL,
                                 model TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_kind_seq ON jobs (kind, seq);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, model);
CREATE INDEX IF NOT EXISTS jobs_session ON jobs (json_extract(data, '$.session_id'));
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
                                    session_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS uploads_session ON uploads (session_id, seq);
-- one row per job made under an Idempotency-Key (n for an images call); removed with the job
CREATE TABLE IF NOT EXISTS idempotency (key_id TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,
                                        job_id TEXT NOT NULL, PRIMARY KEY (key_id, key, job_id));
CREATE INDEX IF NOT EXISTS idempotency_job ON idempotency (job_id);
-- bucket objects whose deletion failed: retried by the retention sweep until it succeeds
CREATE TABLE IF NOT EXISTS pending_deletions (key TEXT PRIMARY KEY, since REAL NOT NULL);
"""


class SQLiteJobStore:
    """Jobs in one SQLite file (WAL mode): the record as JSON, with the columns queries filter on.

    One writer process, the JobTracker deployment; the lock serialises its threads. A read that could return
    many rows is a generator of pages, each read under the lock on its own (`PAGE` rows at most).
    """

    def __init__(self, path: str | Path, on_change: Callable[[str, bool], None] | None = None) -> None:
        """`on_change(job_id, queue_moved)` runs after a job's record changes or goes (its lock released);
        `queue_moved`: its status changed, or it is gone, so the queue positions of its model may have moved."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._on_change = on_change or (lambda _id, _moved: None)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    @staticmethod
    def _decode(data: str) -> Job:
        fields = json.loads(data)
        return Job(**fields | dict(status=JobStatus(fields["status"]), kind=JobKind(fields["kind"]),
                                   params=JobParams(**fields["params"])))

    def _write(self, job: Job) -> None:
        self._db.execute(
            "UPDATE jobs SET status = ?, data = ? WHERE id = ?", (job.status, json.dumps(asdict(job)), job.id)
        )

    def _get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._decode(row[0]) if row else None

    def _pages(self, table: str, key: str, where: str, args: tuple[Any, ...] = ()) -> Iterator[str]:
        """The `data` of every row of `table` matching `where`, in `key` order: PAGE rows scanned per lock hold.

        Rows that do not match come back as NULL, so a filter no index serves still costs one page per hold.
        """
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {key}, CASE WHEN {where} THEN data END FROM {table} WHERE {key} > ? "
                    f"ORDER BY {key} LIMIT ?", (*args, last, PAGE)).fetchall()
            yield from (data for _, data in rows if data is not None)
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    def _existing(self, key_id: str, idempotency: Idempotency) -> list[Job] | None:
        """The jobs an earlier create made under this key; KeyReused if it came with another body."""
        rows = self._db.execute(
            f"SELECT i.fingerprint, j.data FROM idempotency AS i JOIN jobs AS j ON j.id = i.job_id "
            f"WHERE i.key_id = ? AND i.key = ? AND {_LISTED} ORDER BY j.seq", (key_id, idempotency.key)).fetchall()
        if not rows:
            return None
        if any(fingerprint != idempotency.fingerprint for fingerprint, _ in rows):
            raise KeyReused("this Idempotency-Key was already used with another request body")
        return [self._decode(data) for _, data in rows]

    def create(self, jobs: list[Job], max_active: int, max_per_key: int | None = None,
               idempotency: Idempotency | None = None) -> list[Job] | str | None:
        """Store all of `jobs` (one model's, one key's): None. Or none when they would make more than `max_active`
        of the model's or `max_per_key` of the key's queued or running: then what is full, "model" or "key".

        With `idempotency`, the jobs an earlier create made under the same key and body come back instead, in
        the same lock hold as the admission, so two identical requests at once make one set of jobs.
        """
        key_id = jobs[0].key_id or ""
        with self._lock:
            if idempotency is not None and (existing := self._existing(key_id, idempotency)) is not None:
                return existing
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
                if idempotency is not None:
                    self._db.executemany(
                        "INSERT INTO idempotency (key_id, key, fingerprint, job_id) VALUES (?, ?, ?, ?)",
                        [(key_id, idempotency.key, idempotency.fingerprint, j.id) for j in jobs])
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
            if job is None or (job.status.terminal and not even_if_ended):
                return job
            status = job.status
            for name, value in fields.items():
                setattr(job, name, value)
            job.version += 1
            self._write(job)
        self._on_change(job_id, job.status is not status)
        return job

    def delete(self, job_id: str) -> None:
        """The record and its idempotency keys: a retry after this makes a new job."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._db.execute("DELETE FROM idempotency WHERE job_id = ?", (job_id,))
        self._on_change(job_id, True)

    def jobs_in_session(self, session_id: str) -> Iterator[Job]:
        """Every job of the session, deleted ones included (their files are the session's too), page by page."""
        for data in self._pages("jobs", "seq", "json_extract(data, '$.session_id') = ?", (session_id,)):
            yield self._decode(data)

    def newest_in_session(self, session_id: str, limit: int) -> list[Job]:
        """The session's `limit` newest jobs clients see, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT data FROM jobs WHERE json_extract(data, '$.session_id') = ? AND {_LISTED} "
                "ORDER BY seq DESC LIMIT ?", (session_id, limit)).fetchall()
        return [self._decode(r[0]) for r in reversed(rows)]

    def create_session(self, session: Session) -> None:
        with self._lock:
            self._db.execute("INSERT INTO sessions (id, data) VALUES (?, ?)",
                             (session.id, json.dumps(asdict(session))))

    def get_session(self, session_id: str) -> Session | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return Session(**json.loads(row[0])) if row else None

    def update_session(self, session: Session) -> None:
        with self._lock:
            self._db.execute("UPDATE sessions SET data = ? WHERE id = ?", (json.dumps(asdict(session)), session.id))

    def delete_session(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def add_upload(self, upload: Upload) -> None:
        with self._lock:
            self._db.execute("INSERT INTO uploads (id, session_id, data) VALUES (?, ?, ?)",
                             (upload.id, upload.session_id, json.dumps(asdict(upload))))

    def get_upload(self, upload_id: str) -> Upload | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return Upload(**json.loads(row[0])) if row else None

    def uploads(self, session_id: str) -> Iterator[Upload]:
        for data in self._pages("uploads", "seq", "session_id = ?", (session_id,)):
            yield Upload(**json.loads(data))

    def newest_uploads(self, session_id: str, limit: int) -> list[Upload]:
        """The session's `limit` newest uploads, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT data FROM uploads WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
                                    (session_id, limit)).fetchall()
        return [Upload(**json.loads(r[0])) for r in reversed(rows)]

    def delete_uploads(self, upload_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM uploads WHERE id = ?", [(u,) for u in upload_ids])

    def active(self) -> Iterator[Job]:
        """Every job still queued or running, page by page."""
        for data in self._pages("jobs", "seq", "status IN (?, ?)", ACTIVE):
            yield self._decode(data)

    def expired_jobs(self, before: float) -> Iterator[Job]:
        """Jobs that ended before `before` (or began then, if they never recorded an end): never an active one."""
        where = ("status IN (?, ?, ?) AND "
                 "COALESCE(json_extract(data, '$.completed_at'), json_extract(data, '$.created_at')) < ?")
        for data in self._pages("jobs", "seq", where, (*ENDED, before)):
            yield self._decode(data)

    def undelivered(self) -> Iterator[Job]:
        """Jobs that ended with a webhook to send and no delivery recorded, page by page."""
        where = ("status IN (?, ?, ?) AND json_extract(data, '$.webhook_url') IS NOT NULL "
                 "AND json_extract(data, '$.webhook') IS NULL")
        for data in self._pages("jobs", "seq", where, ENDED):
            yield self._decode(data)

    def expired_uploads(self, before: float) -> Iterator[Upload]:
        for data in self._pages("uploads", "seq", "json_extract(data, '$.created_at') < ?", (before,)):
            yield Upload(**json.loads(data))

    def sessions_to_remove(self, before: float) -> Iterator[Session]:
        """Sessions whose DELETE did not finish, and sessions made before `before` with no job or upload left."""
        where = ("IFNULL(json_extract(data, '$.deleting'), 0) OR (json_extract(data, '$.created_at') < ? AND "
                 "NOT EXISTS (SELECT 1 FROM jobs WHERE json_extract(jobs.data, '$.session_id') = sessions.id) AND "
                 "NOT EXISTS (SELECT 1 FROM uploads WHERE uploads.session_id = sessions.id))")
        for data in self._pages("sessions", "rowid", where, (before,)):
            yield Session(**json.loads(data))

    def defer_deletes(self, keys: list[str]) -> None:
        """Bucket objects to delete on a later sweep, since deleting them now failed."""
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO pending_deletions (key, since) VALUES (?, ?)",
                                 [(k, time.time()) for k in keys])

    def pending_deletes(self) -> Iterator[list[str]]:
        """The deferred bucket deletions, a page at a time."""
        last = ""
        while True:
            with self._lock:
                keys = [k for (k,) in self._db.execute(
                    "SELECT key FROM pending_deletions WHERE key > ? ORDER BY key LIMIT ?", (last, PAGE))]
            if keys:
                yield keys
            if len(keys) < PAGE:
                return
            last = keys[-1]

    def deleted(self, keys: list[str]) -> None:
        """Deferred deletions that have now succeeded."""
        with self._lock:
            self._db.executemany("DELETE FROM pending_deletions WHERE key = ?", [(k,) for k in keys])
