"""One real Ray Serve application on CPU with every tiny twin, shared by the HTTP tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from serve_app.app import build_app
from tests.s3server import free_port

APP = "wan"
METRICS_PORT = free_port()
TINY_MODELS = ["tiny-t2v", "tiny-i2v", "tiny-flf2v", "tiny-vace", "tiny-ti2v", "tiny-a14b"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cluster tests start Ray on a multi-node cluster of their own: run them before the shared app."""
    items.sort(key=lambda item: item.path.name != "test_cluster.py")


def app_args(root: Path, models: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "job_db": str(root / "jobs.db"),
        "storage": {"root": str(root / "outputs")},
        "models": [{"name": m, "ray_actor_options": {"num_cpus": 0.1}, **extra} for m in models],
    }


@pytest.fixture(scope="session")
def serve_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared app's job database and storage root."""
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="session")
def serve_url(serve_root: Path) -> Iterator[str]:
    port = free_port()
    # Metrics on a known port, reported every second, so tests can read them off the Prometheus endpoint.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, _metrics_export_port=METRICS_PORT,
             _system_config={"metrics_report_interval_ms": 1000})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(app_args(serve_root, TINY_MODELS)), name=APP, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def client(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=60) as c:
        yield c


def until(check: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Seconds until `check()` holds (polled; the deadline only bounds a hang)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.2)
    return time.monotonic() - started


def wait_for(client: httpx.Client, video_id: str, until: set[str], timeout_s: float = 120) -> dict[str, Any]:
    """Poll a job until its status is in `until`, as a client would (the deadline only bounds a hang)."""
    deadline = time.monotonic() + timeout_s
    while True:
        video = client.get(f"/v1/videos/{video_id}").json()
        if video["status"] in until:
            return video
        if time.monotonic() > deadline:
            raise AssertionError(f"{video_id} still {video['status']} after {timeout_s}s: {video}")
        time.sleep(0.05)


def scrape_until(names: set[str], timeout_s: float = 60) -> str:
    """The node's Prometheus text once every metric in `names` is in it (metrics are reported each second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
        missing = {n for n in names if f"\n{n}" not in text and f"\n{n}{{" not in text}
        if not missing:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never exported: {sorted(missing)}")
        time.sleep(0.5)
