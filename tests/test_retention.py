"""Deletion and retention: the store's paged reads, the Reaper's choice of what expires, bucket deletions that fail
and are retried, and (against a real app with a bucket) DELETE of a session and an image, and records expiring
with their files on disk and in the bucket."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from ray import serve

from deployments.assets import AssetStore, Encoded
from deployments.jobstore import PAGE, SQLiteJobStore
from deployments.retention import DAY_S, Reaper
from deployments.storage import S3Config, job_prefix, upload_key
from deployments.uploader import Files
from domain.records import Job, JobParams, JobStatus, Session, Upload
from serve_app.app import build_app
from tests.media import png
from tests.s3server import FlakyProxy, s3_server
from tests.support.app import app_args
from tests.support.jobs import ENDED, until, wait_for

S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


def job(status: JobStatus = JobStatus.COMPLETED, ended: float | None = None, session_id: str | None = None,
        assets: list[dict[str, Any]] | None = None) -> Job:
    return Job(id=f"video_{uuid.uuid4().hex}", kind="video", model="tiny-t2v", task="t2v", prompt="p",
               params=JobParams(size="64x32", seed=0, num_inference_steps=4),
               plan={}, status=status, session_id=session_id, completed_at=ended, assets=assets or [])


def stored(files: AssetStore, job_id: str, session_id: str | None = None) -> list[dict[str, Any]]:
    """A job's asset written under its prefix, as the Uploader writes it (and pushed, with a bucket)."""
    records = files.save(job_prefix(job_id, session_id), [Encoded("video", "video", "mp4", b"mp4 bytes")])
    records, status = files.push(records)
    assert status is None or status["status"] == "completed", status
    return records


# --- the store's reads are paged -------------------------------------------------------------------------


def test_large_reads_come_in_pages_and_leave_the_lock_free_between_them(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    many = [job(JobStatus.QUEUED, session_id="sess_big") for _ in range(3 * PAGE + 5)]
    store.create(many, max_active=10_000)
    selects: list[str] = []
    store._db.set_trace_callback(lambda sql: selects.append(sql) if sql.startswith("SELECT") else None)

    pages = store.jobs_in_session("sess_big")
    first = next(pages)
    # A generator's step report, mid-read: it must not wait for the whole read to finish.
    stepped = threading.Thread(target=store.update, args=(many[-1].id,), kwargs={"step": 3})
    stepped.start()
    stepped.join(timeout=5)
    assert not stepped.is_alive(), "an update waited behind a paged read"
    rest = list(pages)
    assert [j.id for j in [first, *rest]] == [j.id for j in many]
    assert rest[-1].step == 3, "the page read after the update sees it"
    assert len([s for s in selects if "FROM jobs WHERE seq >" in s]) == 4, "PAGE rows per read, 4 reads"

    assert len(list(store.active())) == len(many)
    newest = store.newest_in_session("sess_big", 100)
    assert [j.id for j in newest] == [j.id for j in many[-100:]], "the newest 100, oldest first"


# --- the Reaper -----------------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> tuple[SQLiteJobStore, AssetStore, Reaper]:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    files = AssetStore(str(tmp_path / "outputs"))
    cancelled: list[str] = []

    def cancel(job_id: str) -> Job | None:
        cancelled.append(job_id)
        return store.update(job_id, cancel_requested=True, delete_requested=True)

    return store, files, Reaper(store, Files(files), cancel, days=1)


def test_retention_removes_what_ended_before_the_cutoff_and_never_an_active_job(world: Any) -> None:
    store, files, reaper = world
    now = time.time()
    old, fresh = now - 2 * DAY_S, now - 60
    expired = [job(JobStatus.COMPLETED, old), job(JobStatus.FAILED, old), job(JobStatus.CANCELLED, old)]
    kept = [job(JobStatus.COMPLETED, fresh), job(JobStatus.IN_PROGRESS), job(JobStatus.QUEUED)]
    kept[1].created_at = kept[2].created_at = old  # running for two days: still never expired
    for j in expired + kept:
        j.assets = stored(files, j.id)
        store.create([j], max_active=100)
    # An old session whose jobs and uploads all expire goes; one with a fresh job stays.
    empty, busy = Session(id="sess_empty", created_at=old), Session(id="sess_busy", created_at=old)
    store.create_session(empty)
    store.create_session(busy)
    in_busy = job(JobStatus.COMPLETED, fresh, session_id="sess_busy")
    in_busy.assets = stored(files, in_busy.id, "sess_busy")
    store.create([in_busy], max_active=100)
    uploads = [Upload(id=f"upload_{n}", session_id=s, kind="image", filename="a.jpg", key=upload_key(s, f"upload_{n}",
                      "jpg"), content_type="image/jpeg", size_bytes=3, created_at=t)
               for n, (s, t) in enumerate([("sess_empty", old), ("sess_busy", old), ("sess_busy", fresh)])]
    for u in uploads:
        files.local.put(u.key, b"jpg", u.content_type)
        store.add_upload(u)

    swept = reaper.sweep(now)

    assert (swept.jobs, swept.uploads, swept.sessions) == (3, 2, 1)
    assert all(store.get(j.id) is None for j in expired)
    assert all(store.get(j.id) is not None for j in [*kept, in_busy])
    assert not any((files.local.root / "generations" / j.id).exists() for j in expired), "files and folders go"
    assert all((files.local.root / j.assets[0]["key"]).is_file() for j in [*kept, in_busy])
    assert store.get_session("sess_empty") is None and not (files.local.root / "sessions/sess_empty").exists()
    assert store.get_session("sess_busy") is not None
    assert [u.id for u in store.uploads("sess_busy")] == ["upload_2"]
    assert not (files.local.root / uploads[1].key).exists() and (files.local.root / uploads[2].key).exists()
    assert reaper.sweep(now) == type(swept)(), "nothing left to remove"


def test_without_days_nothing_expires(world: Any) -> None:
    store, _, reaper = world
    reaper.days = None
    ancient = job(JobStatus.COMPLETED, 0.0)
    store.create([ancient], max_active=10)
    assert reaper.sweep().jobs == 0 and store.get(ancient.id) is not None
    assert reaper.expires_at(100.0) is None


def test_deleting_a_session_removes_its_jobs_uploads_and_files_and_stops_a_running_one(world: Any) -> None:
    store, files, reaper = world
    store.create_session(Session(id="sess_x"))
    done, running = job(session_id="sess_x"), job(JobStatus.IN_PROGRESS, session_id="sess_x")
    done.assets = stored(files, done.id, "sess_x")
    store.create([done, running], max_active=10)
    upload = Upload(id="upload_x", session_id="sess_x", kind="image", filename="a.jpg",
                    key=upload_key("sess_x", "upload_x", "jpg"), content_type="image/jpeg", size_bytes=3)
    files.local.put(upload.key, b"jpg", upload.content_type)
    store.add_upload(upload)

    reaper.remove_session("sess_x")

    assert store.get(done.id) is None and not (files.local.root / done.assets[0]["key"]).exists()
    assert store.get(running.id).delete_requested, "stopped, and left to its owner to remove"
    assert list(store.uploads("sess_x")) == [] and not (files.local.root / upload.key).exists()
    assert store.get_session("sess_x").deleting, "kept, marked, until its running job is gone"
    store.update(running.id, status=JobStatus.CANCELLED)
    store.delete(running.id)  # what its owner does once it has stopped
    assert reaper.sweep().sessions == 1 and store.get_session("sess_x") is None
    assert not (files.local.root / "sessions" / "sess_x").exists()


# --- bucket deletions that fail are retried -------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def bucket_keys(endpoint: str, bucket: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_a_failed_bucket_delete_is_kept_and_retried_on_the_next_sweep(
        s3_endpoint: str, credentials: None, tmp_path: Path) -> None:
    bucket = f"wan-ret-{uuid.uuid4().hex[:8]}"
    writer = AssetStore(str(tmp_path / "outputs"), S3Config(bucket=bucket, endpoint_url=s3_endpoint,
                                                            create_bucket=True, region="us-east-1"))
    store = SQLiteJobStore(tmp_path / "jobs.db")
    old = job(JobStatus.COMPLETED, time.time() - 2 * DAY_S)
    old.assets = stored(writer, old.id)
    store.create([old], max_active=10)
    key = old.assets[0]["key"]
    assert bucket_keys(s3_endpoint, bucket) == {key}

    # The bucket refuses the first DELETE of the object (S3's SlowDown), and boto3 is allowed one attempt.
    with FlakyProxy(s3_endpoint, f"/{bucket}/{key}", failures=1) as proxy:
        deleter = AssetStore(str(tmp_path / "outputs"), S3Config(bucket=bucket, endpoint_url=proxy.url,
                                                                 max_attempts=1, region="us-east-1"))
        reaper = Reaper(store, Files(deleter), lambda _: None, days=1)
        first = reaper.sweep()
        assert first.jobs == 1 and store.get(old.id) is None, "the record goes"
        assert bucket_keys(s3_endpoint, bucket) == {key}, "the bucket copy could not"
        assert list(store.pending_deletes()) == [[key]], "it is kept to retry, not dropped"
        second = reaper.sweep()
        assert [(s.method, s.status) for s in proxy.attempts()] == [("DELETE", 503), ("DELETE", 204)]
    assert second.pending == 0 and list(store.pending_deletes()) == []
    assert bucket_keys(s3_endpoint, bucket) == set()


# --- against a real app ---------------------------------------------------------------------------------


def test_delete_a_session_with_its_uploads_jobs_and_files(client: httpx.Client, serve_root: Path) -> None:
    outputs = serve_root / "outputs"
    session = client.post("/v1/sessions", json={}).json()["id"]
    uploaded = client.post(f"/v1/sessions/{session}/uploads", files={"file": ("a.png", png(), "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    upload = uploaded.json()
    video = client.post("/v1/videos", json={"prompt": "in a session", "num_frames": 5, "session_id": session,
                                            "model": "tiny-t2v"}).json()
    assert wait_for(client, video["id"], ENDED)["status"] == "completed"
    batch = client.post("/v1/images/batches", json={"prompts": ["a", "b"], "session_id": session}).json()
    until(lambda: client.get(f"/v1/images/batches/{batch['id']}").json()["status"] in ENDED, 120, "the batch")
    folder = outputs / "sessions" / session
    assert sorted(p.name for p in folder.iterdir()) == ["generations", "uploads"], list(outputs.rglob("*"))

    deleted = client.delete(f"/v1/sessions/{session}")
    assert deleted.status_code == 200 and deleted.json() == {"id": session, "object": "session.deleted",
                                                             "deleted": True}
    assert client.get(f"/v1/sessions/{session}").status_code == 404
    assert client.get(f"/v1/videos/{video['id']}").status_code == 404
    assert client.get(f"/v1/images/batches/{batch['id']}").status_code == 404
    assert not folder.exists(), "its uploads and outputs are gone from disk"
    reuse = client.post("/v1/videos", json={"prompt": "x", "session_id": session, "video": upload["id"]})
    assert reuse.status_code == 404 and reuse.json()["error"]["param"] == "session_id"
    assert client.delete(f"/v1/sessions/{session}").status_code == 404


def test_delete_a_running_session_job_stops_it_and_its_owner_removes_it(client: httpx.Client) -> None:
    session = client.post("/v1/sessions", json={}).json()["id"]
    video = client.post("/v1/videos", json={"prompt": "slow", "num_frames": 81, "num_inference_steps": 200,
                                            "session_id": session, "model": "tiny-t2v"}).json()
    wait_for(client, video["id"], {"in_progress", *ENDED})
    assert client.delete(f"/v1/sessions/{session}").status_code == 200
    assert client.get(f"/v1/videos/{video['id']}").status_code == 404
    tracker = serve.get_deployment_handle("JobTracker", "wan")
    until(lambda: tracker.get.remote(video["id"]).result() is None, 60, "the owner to remove the stopped job")


def test_delete_an_image(client: httpx.Client, serve_root: Path) -> None:
    made = client.post("/v1/images/generations", json={"prompt": "an image", "response_format": "url"}).json()
    image_id = httpx.URL(made["data"][0]["url"]).path.split("/")[3]
    assert image_id.startswith("img_") and (serve_root / "outputs" / "generations" / image_id).is_dir()
    deleted = client.delete(f"/v1/images/{image_id}")
    assert deleted.json() == {"id": image_id, "object": "image.deleted", "deleted": True}
    assert client.get(f"/v1/images/{image_id}/content").status_code == 404
    assert not (serve_root / "outputs" / "generations" / image_id).exists()
    assert client.delete(f"/v1/images/{image_id}").status_code == 404


@pytest.fixture(scope="module")
def expiring(cluster_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[httpx.Client, Path, str]]:
    """An app whose records expire within three seconds, swept every half second, with a bucket."""
    root = tmp_path_factory.mktemp("retention")
    bucket = f"wan-ret-{uuid.uuid4().hex[:8]}"
    args = app_args(root, ["tiny-t2v"])
    args["storage"]["s3"] = {"bucket": bucket, "endpoint_url": s3_endpoint, "create_bucket": True, **S3_KEYS}
    args["retention"] = {"days": 0.00003, "sweep_interval_s": 0.5}
    serve.run(build_app(args), name="retention", route_prefix="/retention")
    with httpx.Client(base_url=f"{cluster_url}/retention", timeout=60) as client:
        yield client, root / "outputs", bucket
    serve.delete("retention", _blocking=False)


def test_an_expired_job_goes_with_its_files_on_disk_and_in_the_bucket(expiring: Any, s3_endpoint: str) -> None:
    client, outputs, bucket = expiring
    video = client.post("/v1/videos", json={"prompt": "short-lived", "num_frames": 5}).json()
    done = wait_for(client, video["id"], ENDED)
    assert done["status"] == "completed" and done["upload"]["status"] == "completed", done
    assert done["expires_at"] - done["completed_at"] in (2, 3), "2.6 s after it ended"
    prefix = f"generations/{video['id']}/"
    until(lambda: client.get(f"/v1/videos/{video['id']}").status_code == 404, 30, "the record to expire")
    until(lambda: not (outputs / prefix).exists(), 10, "the local files to go")
    until(lambda: not any(k.startswith(prefix) for k in bucket_keys(s3_endpoint, bucket)), 10, "the bucket copies")
