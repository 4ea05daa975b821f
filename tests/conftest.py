"""One real Ray Serve application on CPU with every tiny twin, shared by the HTTP tests."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import torch
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from serve_app.app import build_app
from tests.s3server import free_port

APP = "wan"
TINY_MODELS = ["tiny-t2v", "tiny-i2v", "tiny-flf2v", "tiny-vace", "tiny-ti2v", "tiny-a14b"]
# these start and stop Ray themselves
OWN_RAY = ("test_cluster.py", "test_restart.py", "test_faults.py", "test_benchmarks.py")
POLL_S = 0.1  # how often tests poll, as a client would; faster only loads the 2 cores the app runs on
APP_READY_S = 240  # six tiny twins load in about 30 s; the deadline tells a slow start from one that never ends
Samples = dict[str, list[tuple[dict[str, str], float]]]
EXIT_STATUS = pytest.StashKey[int]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray their own way run before the shared app starts it; `gpu` tests need CUDA."""
    items.sort(key=lambda item: item.path.name not in OWN_RAY)
    if not torch.cuda.is_available():
        no_gpu = pytest.mark.skip(reason=f"needs a CUDA GPU; torch {torch.__version__} sees none")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(no_gpu)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with the session's exit status once every plugin is done, without the interpreter's finalisation.

    This process runs several Ray sessions one after another (OWN_RAY's, then the shared app's), and the threads a
    session's handles leave behind can reference its freed core worker: a full run once passed every test, printed
    its summary, and then died of a segmentation fault in finalisation (ray-project/ray#31145), which a CI run reads
    as a failure. Everything a test run reports is written by now."""
    if EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])


def app_args(root: Path, models: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "job_db": str(root / "jobs.db"),
        "storage": {"root": str(root / "outputs")},
        "models": [{"name": m, "ray_actor_options": {"num_cpus": 0.1}, **extra} for m in models],
    }


def replica_logs(app: str, deployment: str = "", lines: int = 20) -> str:
    """The last lines of each replica log of `app` (this Ray session's), for a message that says why."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    tails = [f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
             for path in sorted(logs.glob(f"replica_{app}_{deployment}*.log"))]
    return "\n".join(tails) or f"no replica logs of {app} in {logs}"


def metrics_url() -> str:
    """This node's Prometheus endpoint: the port is Ray's own choice, read back once Ray has bound it."""
    return f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"


def scrape() -> Samples:
    """Every sample on the node's Prometheus endpoint, by sample name: [(labels, value)]."""
    samples: Samples = {}
    for family in text_string_to_metric_families(httpx.get(metrics_url(), timeout=30).text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of `name` over the samples carrying `labels` (Ray adds worker and node labels); None if absent."""
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    return sum(found) if found else None


def scrape_until(check: Callable[[Samples], bool], what: str, timeout_s: float = 60, logs_of: str = "") -> Samples:
    """The node's metrics once `check` holds of them (Ray reports each second); on a timeout, with the logs of
    `logs_of`'s replicas, so a metric that never comes is told from a slow one."""
    deadline = time.monotonic() + timeout_s
    while not check(samples := scrape()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never showed on {metrics_url()} within {timeout_s} s\n"
                                 + (replica_logs(APP, logs_of) if logs_of else ""))
        time.sleep(0.5)
    return samples


class Cluster:
    """A local Ray cluster with Serve of a module's own (one in OWN_RAY), which a test may crash and start again."""

    url = ""

    def start(self) -> None:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    assert not ray.is_initialized(), "these tests must run before anything else starts Ray"
    cluster = Cluster()
    cluster.start()
    yield cluster
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared app's job database and storage root."""
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="session")
def serve_url(serve_root: Path) -> Iterator[str]:
    """The shared app, ready: every generator loaded and its first metrics exported (the readiness gate)."""
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             _system_config={"metrics_report_interval_ms": 1000})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(app_args(serve_root, TINY_MODELS)), name=APP, route_prefix="/")
    scrape_until(lambda s: all(metric(s, "ray_wan_model_load_seconds_count", model=m) for m in TINY_MODELS),
                 "every generator's model load", timeout_s=APP_READY_S, logs_of="Generator")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(autouse=True)
def settled(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the shared app leaves no job behind to slow or skew the next one: it waits for them to end."""
    yield
    if "serve_url" in request.fixturenames:  # asked over HTTP: a browser test's driver runs an event loop here
        url = request.getfixturevalue("serve_url")
        until(lambda: not any(q["queued"] or q["in_progress"]
                              for q in httpx.get(f"{url}/v1/queue", timeout=30).json()["data"]),
              240, "the shared app's jobs to end")


@pytest.fixture
def client(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=60) as c:
        yield c


def until(check: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Seconds until `check()` holds (polled; the deadline only bounds a hang)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} did not happen within {timeout_s} s"
        time.sleep(POLL_S)
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
        time.sleep(POLL_S)
