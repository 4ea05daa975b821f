"""Storage backends: S3Storage against moto's S3 server over real HTTP, and LocalStorage's side of the protocol."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import ExponentialBackoff
from pydantic import ValidationError

from deployments.storage import LocalStorage, S3Config, S3Storage, StorageError, job_prefix, upload_key
from tests.s3server import DUMMY_CREDENTIALS, FlakyProxy, free_port, s3_server

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy keys through boto3's usual chain, and no ~/.aws profile of whoever runs the tests."""
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def bucket() -> str:
    return f"wan-test-{uuid.uuid4().hex[:12]}"


def s3(endpoint: str, bucket: str, **fields: Any) -> S3Storage:
    return S3Storage(S3Config(bucket=bucket, endpoint_url=endpoint, create_bucket=True, **fields))


def raw_client(endpoint: str) -> Any:
    """A plain client, to see the bucket as S3 itself reports it rather than through the code under test."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def head(endpoint: str, bucket: str, key: str) -> dict[str, Any]:
    return raw_client(endpoint).head_object(Bucket=bucket, Key=key)


def test_layout_helpers() -> None:
    assert job_prefix("video_abc", "sess1") == "sessions/sess1/generations/video_abc/"
    assert job_prefix("video_abc", None) == "generations/video_abc/"
    assert upload_key("sess1", "up_9", "mp4") == "sessions/sess1/uploads/up_9.mp4"


def test_put_get_round_trip_keeps_content_type(endpoint: str, bucket: str) -> None:
    storage = s3(endpoint, bucket)
    key = job_prefix("video_1", "sess1") + "video.mp4"
    storage.put(key, b"\x00mp4 bytes\xff", "video/mp4")

    assert storage.get(key) == b"\x00mp4 bytes\xff"
    assert head(endpoint, bucket, key)["ContentType"] == "video/mp4"


def test_explicit_keys_override_the_environment(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DUMMY_CREDENTIALS:
        monkeypatch.delenv(name)
    storage = s3(endpoint, bucket, access_key_id="minio", secret_access_key="minio-secret")
    storage.put("a.png", b"png", "image/png")
    assert storage.get("a.png") == b"png"


def test_presigned_url_serves_the_object(endpoint: str, bucket: str) -> None:
    storage = s3(endpoint, bucket, presign_expiry_s=600)
    key = upload_key("sess1", "up_1", "webp")
    storage.put(key, b"webp bytes", "image/webp")

    url = storage.url(key)
    assert url is not None
    assert url.startswith(f"{endpoint}/{bucket}/{key}?")  # path-style on a custom endpoint
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    assert httpx.get(url.split("?")[0], timeout=10).status_code == 403  # the bucket is private: the signature counts
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == b"webp bytes"
    assert response.headers["content-type"] == "image/webp"


def test_public_url_base_and_prefix(endpoint: str, bucket: str) -> None:
    storage = s3(endpoint, bucket, prefix="wan/", public_url_base=f"{endpoint}/{bucket}/")
    key = job_prefix("video_2", None) + "thumbnail.webp"
    storage.put(key, b"thumb", "image/webp")
    public_read = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                   "Resource": f"arn:aws:s3:::{bucket}/*"}  # as a CDN-fronted bucket is set up
    raw_client(endpoint).put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [public_read]}))

    assert storage.url(key) == f"{endpoint}/{bucket}/wan/{key}"
    assert head(endpoint, bucket, f"wan/{key}")["ContentLength"] == 5
    assert httpx.get(storage.url(key) or "", timeout=10).content == b"thumb"


def test_large_object_is_uploaded_in_parts(endpoint: str, bucket: str) -> None:
    storage = s3(endpoint, bucket, multipart_threshold_mb=5)
    big = bytes(range(256)) * (12 * MIB // 256)
    storage.put("big.mp4", big, "video/mp4")
    storage.put("small.mp4", big[: 4 * MIB], "video/mp4")

    # A multipart ETag is "<md5 of the part md5s>-<part count>": 12 MiB in 5 MiB parts is 3 parts.
    assert head(endpoint, bucket, "big.mp4")["ETag"].strip('"').endswith("-3")
    assert "-" not in head(endpoint, bucket, "small.mp4")["ETag"]
    assert head(endpoint, bucket, "big.mp4")["ContentType"] == "video/mp4"
    assert storage.get("big.mp4") == big


def test_delete(endpoint: str, bucket: str) -> None:
    storage = s3(endpoint, bucket)
    storage.put("gone.png", b"png", "image/png")
    storage.delete("gone.png")

    with pytest.raises(StorageError, match="NoSuchKey"):
        storage.get("gone.png")
    storage.delete("gone.png")  # a missing key is not an error, as with local files


def test_create_bucket_outside_us_east_1_and_again(endpoint: str, bucket: str) -> None:
    s3(endpoint, bucket, region="eu-west-1").put("x.png", b"1", "image/png")
    assert s3(endpoint, bucket, region="eu-west-1").get("x.png") == b"1"  # an existing bucket is kept


def test_missing_bucket_is_a_storage_error(endpoint: str, bucket: str) -> None:
    storage = S3Storage(S3Config(bucket=bucket, endpoint_url=endpoint))
    with pytest.raises(StorageError, match=f"s3://{bucket}/k.png.*NoSuchBucket"):
        storage.put("k.png", b"png", "image/png")


def test_unreachable_endpoint_is_a_storage_error() -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens there
    storage = S3Storage(S3Config(bucket="wan-outputs", endpoint_url=closed, prefix="p/", max_attempts=1))

    for operation in (lambda: storage.put("videos/v.mp4", b"x", "video/mp4"), lambda: storage.get("videos/v.mp4"),
                      lambda: storage.delete("videos/v.mp4")):
        with pytest.raises(StorageError, match=re.escape("s3://wan-outputs/p/videos/v.mp4")) as info:
            operation()
        assert isinstance(info.value.__cause__, BotoCoreError)
    with pytest.raises(StorageError, match="s3://wan-outputs"):
        S3Storage(S3Config(bucket="wan-outputs", endpoint_url=closed, max_attempts=1, create_bucket=True))


# botocore's standard retry mode sleeps rand(0, 1) * min(base * 2**i, 20) s before retry i + 1 (i from 0), with
# base 1 s for a throttling error such as SlowDown: jittered down to nothing, so no gap has a lower bound of its
# own; the cap is what it guarantees. An x-amz-retry-after of r s raises each sleep to at least min(r, sleep + 5).
SLOW_DOWN_BASE_S = 1.0
ROUND_TRIP_S = 1.0  # a generous bound on what a loopback request to moto adds to a gap, on a loaded machine


def _gaps(proxy: FlakyProxy) -> list[float]:
    times = [seen.at for seen in proxy.attempts()]
    return [later - earlier for earlier, later in pairwise(times)]


def test_put_retries_a_throttled_upload_with_backoff(endpoint: str, bucket: str) -> None:
    raw_client(endpoint).create_bucket(Bucket=bucket)
    failures = 2
    with FlakyProxy(endpoint, f"/{bucket}/retried.mp4", failures) as proxy:
        S3Storage(S3Config(bucket=bucket, endpoint_url=proxy.url, max_attempts=failures + 1)).put(
            "retried.mp4", b"mp4 bytes", "video/mp4")

    assert [(seen.method, seen.status) for seen in proxy.attempts()] == [("PUT", 503)] * failures + [("PUT", 200)]
    assert raw_client(endpoint).get_object(Bucket=bucket, Key="retried.mp4")["Body"].read() == b"mp4 bytes"
    gaps = _gaps(proxy)
    assert all(gap > 0 for gap in gaps), gaps  # in order and apart: all that the jitter itself promises
    caps = [SLOW_DOWN_BASE_S * 2**i for i in range(failures)]  # 1 s, then 2 s
    assert all(gap < cap + ROUND_TRIP_S for gap, cap in zip(gaps, caps, strict=True)), gaps


@pytest.mark.skipif(not hasattr(ExponentialBackoff, "_RETRY_AFTER_HEADER"),
                    reason="this botocore's standard mode does not read x-amz-retry-after")
def test_retries_wait_as_long_as_the_server_asks(endpoint: str, bucket: str) -> None:
    """The one lower bound on a gap: the server's x-amz-retry-after, which botocore waits out (up to sleep + 5 s)."""
    raw_client(endpoint).create_bucket(Bucket=bucket)
    with FlakyProxy(endpoint, f"/{bucket}/later.png", failures=2, retry_after_ms=300) as proxy:
        S3Storage(S3Config(bucket=bucket, endpoint_url=proxy.url, max_attempts=3)).put("later.png", b"png", "image/png")

    assert [seen.status for seen in proxy.attempts()] == [503, 503, 200]
    assert all(gap >= 0.3 for gap in _gaps(proxy)), _gaps(proxy)


def test_put_gives_up_after_max_attempts(endpoint: str, bucket: str) -> None:
    raw_client(endpoint).create_bucket(Bucket=bucket)
    failures = 2
    with FlakyProxy(endpoint, f"/{bucket}/lost.mp4", failures) as proxy:
        storage = S3Storage(S3Config(bucket=bucket, endpoint_url=proxy.url, max_attempts=failures))
        with pytest.raises(StorageError, match=f"s3://{bucket}/lost.mp4.*SlowDown"):
            storage.put("lost.mp4", b"mp4 bytes", "video/mp4")

    assert [seen.status for seen in proxy.attempts()] == [503] * failures  # no attempt past the limit
    with pytest.raises(ClientError, match="404"):
        head(endpoint, bucket, "lost.mp4")


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="together"):
        S3Config(bucket="b-1", access_key_id="only-the-id")
    with pytest.raises(ValidationError, match="multipart_threshold_mb"):
        S3Config(bucket="b-1", multipart_threshold_mb=4)
    with pytest.raises(ValidationError, match="Extra inputs"):
        S3Config(bucket="b-1", endpoint="http://x")
    assert "hunter2" not in repr(S3Config(bucket="b-1", access_key_id="id", secret_access_key="hunter2"))


def test_local_storage_has_no_url(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("videos/v.mp4", b"mp4", "video/mp4")
    assert storage.url("videos/v.mp4") is None
    with storage.open("videos/v.mp4") as f:
        assert f.read() == (tmp_path / "videos/v.mp4").read_bytes() == b"mp4"
