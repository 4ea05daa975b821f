"""One real Ray Serve application on CPU with every tiny twin, shared by the HTTP tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
import torch
from ray import serve

from serve_app.app import build_app
from tests.support.app import APP, Cluster, shared_args
from tests.support.jobs import until
from tests.support.metrics import metric, scrape_until

# these start and stop Ray themselves
OWN_RAY = ("test_cluster.py", "test_faults.py")
# seven tiny twins and the enhancer load in about 40 s; the deadline tells a slow start from one that never ends
APP_READY_S = 240
EXIT_STATUS = pytest.StashKey[int]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray their own way run first; then those without Ray; then those with apps of their own on
    the tests' cluster; then those on the shared app, which starts once, late: idle replicas cost the 2 cores about a
    tenth of a core per ten, so none runs beside a test that does not need it. `gpu` tests need CUDA."""
    def phase(item: pytest.Item) -> int:
        if item.path.name in OWN_RAY:
            return 0
        fixtures = getattr(item, "fixturenames", ())
        return 3 if "serve_url" in fixtures else 2 if "cluster_url" in fixtures else 1

    items.sort(key=phase)
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


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    assert not ray.is_initialized(), "these tests must run before anything else starts Ray"
    cluster = Cluster()
    cluster.start()
    yield cluster
    ray.shutdown()  # Serve with it: its graceful drain would only make the next module wait


@pytest.fixture(scope="session")
def serve_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared app's job database and storage root."""
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """Ray and Serve on this machine, no app yet: the URL of Serve's proxy, where the apps of the tests go. Metrics
    are reported each second, so a test sees its job's in a second or two."""
    cluster = Cluster(num_cpus=8, system_config={"metrics_report_interval_ms": 1000})
    cluster.start()
    yield cluster.url
    ray.shutdown()  # Serve with it, without a graceful drain nobody waits for


@pytest.fixture(scope="session")
def serve_url(cluster_url: str, serve_root: Path) -> str:
    """The shared app, ready: every generator loaded and its first metrics exported (the readiness gate)."""
    args = shared_args(serve_root)
    serve.run(build_app(args), name=APP, route_prefix="/")
    models = [m["name"] for m in args["models"]]
    scrape_until(lambda s: all(metric(s, "ray_wan_model_load_seconds_count", model=m) for m in models),
                 "every generator's model load", timeout_s=APP_READY_S, logs_of="Generator")
    return cluster_url


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
