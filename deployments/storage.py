"""Where outputs live: one small interface, a local directory by default or an S3-compatible bucket.

Keys are relative paths such as `sessions/<sid>/generations/<id>/video.mp4`. The local directory is the
Uploader's alone (it streams files out to the HTTP layer); clients of an object store are sent to `url(key)`,
a public or presigned URL.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

MIB = 1024 * 1024
# The job database and the storage root are on the head node's disk: their only users, the JobTracker and
# the Uploader, are placed there by this resource (every Ray head has it), and the rest reach them by handle.
ON_HEAD_NODE = {"node:__internal_head__": 0.001}


def session_prefix(session_id: str) -> str:
    """The folder holding everything of one session: its uploads and its jobs' outputs."""
    return f"sessions/{session_id}/"


def job_prefix(job_id: str, session_id: str | None) -> str:
    """The folder holding one job's outputs, under its session when it has one so a session can be listed."""
    if session_id is None:
        return f"generations/{job_id}/"
    return f"{session_prefix(session_id)}generations/{job_id}/"


def upload_key(session_id: str, upload_id: str, ext: str) -> str:
    """Where a client's upload for a session is kept, beside that session's generations."""
    return f"{session_prefix(session_id)}uploads/{upload_id}.{ext}"


class StorageError(Exception):
    """A storage operation failed; callers see this one type, whatever the backend's own exception was."""


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def url(self, key: str) -> str | None: ...
    def delete(self, key: str) -> None: ...


class LocalStorage:
    """Files under one root directory, written atomically so a reader never sees half a video."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def url(self, key: str) -> str | None:
        """None: no client can reach these files directly; the Uploader that owns them streams them out."""
        return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def prune(self, prefix: str) -> None:
        """Remove the empty folders under `prefix` (the folder itself included), deepest first; files stay."""
        top = self._path(prefix)
        if not top.is_dir() or top == self.root:
            return
        folders = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for folder in [*folders, top]:
            with contextlib.suppress(OSError):  # not empty, or a writer just put a file in it: it stays
                folder.rmdir()


class S3Config(BaseModel):
    """An S3-compatible bucket (AWS S3, Cloudflare R2, MinIO); embedded in the app config as `storage.s3`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(min_length=3, max_length=63, description="bucket name")
    endpoint_url: str | None = Field(None, description="unset: AWS; set for R2 (https://<account>.r2."
                                                       "cloudflarestorage.com) or MinIO")
    region: str | None = Field(None, description='e.g. "eu-west-1"; R2 takes "auto"; unset: boto3\'s default')
    prefix: str = Field("", description='prepended verbatim to every key inside the bucket, e.g. "wan/"')
    access_key_id: str | None = Field(None, description="unset: boto3's usual chain (AWS_ACCESS_KEY_ID, "
                                                        "~/.aws, instance role)")
    secret_access_key: SecretStr | None = Field(None, description="set together with access_key_id")
    public_url_base: str | None = Field(None, description="a public (CDN) URL of the bucket: url(key) is "
                                                          "base/prefix+key; unset: presigned GET URLs")
    presign_expiry_s: int = Field(3600, ge=1, le=604800, description="lifetime of a presigned URL "
                                                                     "(SigV4 allows 7 days at most)")
    multipart_threshold_mb: int = Field(16, ge=5, description="objects above this are uploaded in parts of this "
                                                              "size (S3's minimum part is 5 MiB)")
    max_attempts: int = Field(5, ge=1, description="attempts per request, the first included; boto3 retries "
                                                   "throttling, 5xx and connection errors with backoff")
    create_bucket: bool = Field(False, description="create the bucket at startup if missing (MinIO, tests)")

    @model_validator(mode="after")
    def _key_pair(self) -> S3Config:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set access_key_id and secret_access_key together, or neither")
        return self


class S3Storage:
    """Objects in one bucket through boto3, which does the retries and the multipart uploads."""

    def __init__(self, config: S3Config) -> None:
        self.config = config
        secret = config.secret_access_key.get_secret_value() if config.secret_access_key else None
        botocore_config = Config(
            retries={"total_max_attempts": config.max_attempts, "mode": "standard"},
            signature_version="s3v4",
            # R2 and MinIO do not serve virtual-hosted bucket names on a custom endpoint.
            s3={"addressing_style": "path"} if config.endpoint_url else None,
        )
        # A session of its own: boto3's default session is shared module state and not thread-safe.
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=secret,
            config=botocore_config,
        )
        threshold = config.multipart_threshold_mb * MIB
        self._transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold)
        if config.create_bucket:
            self._ensure_bucket()

    def _key(self, key: str) -> str:
        return self.config.prefix + key

    def _error(self, action: str, key: str | None, exc: Exception) -> StorageError:
        where = f"s3://{self.config.bucket}/{self._key(key)}" if key is not None else f"s3://{self.config.bucket}"
        return StorageError(f"{action} {where} failed: {type(exc).__name__}: {exc}")

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.config.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise self._error("checking", None, exc) from exc
        except BotoCoreError as exc:
            raise self._error("checking", None, exc) from exc
        # us-east-1 (and no region) is the one location S3 refuses to be told explicitly.
        location = {} if self.config.region in (None, "us-east-1") else {
            "CreateBucketConfiguration": {"LocationConstraint": self.config.region}}
        try:
            self._client.create_bucket(Bucket=self.config.bucket, **location)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("creating", None, exc) from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self._client.upload_fileobj(io.BytesIO(data), self.config.bucket, self._key(key),
                                        ExtraArgs={"ContentType": content_type}, Config=self._transfer)
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise self._error("uploading", key, exc) from exc

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.config.bucket, Key=self._key(key))
            return response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._error("downloading", key, exc) from exc

    def url(self, key: str) -> str | None:
        """The public URL when a base is configured, else a presigned GET (signed locally, no request made)."""
        if self.config.public_url_base is not None:
            return f"{self.config.public_url_base.rstrip('/')}/{quote(self._key(key))}"
        try:
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.config.bucket, "Key": self._key(key)},
                ExpiresIn=self.config.presign_expiry_s)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("presigning", key, exc) from exc

    def delete(self, key: str) -> None:
        """Deleting a missing key succeeds, as S3 itself and `LocalStorage.delete` do."""
        try:
            self._client.delete_object(Bucket=self.config.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("deleting", key, exc) from exc
