"""One app for the tests of the way in for creates over HTTP: a query in words (test_route.py), media by URL
(test_media_urls.py), and admission, a client that leaves and deletes (test_lifecycle.py). Package-scoped, so it
starts once for the three modules and goes once they are done."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from ray import serve

from serve_app.app import build_app
from tests.support.app import INTAKE_APP, LIFECYCLE_LIMIT, LIFECYCLE_MODEL, app_args


@pytest.fixture(scope="package")
def intake(cluster_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """tiny-t2v takes one job at a time, and LIFECYCLE_MODEL (tiny-a14b) also does t2v (a full model's fallback),
    with room for LIFECYCLE_LIMIT jobs; media URLs are allowed over http and on loopback (the tests' origin is
    local); webhooks are left as shipped."""
    args = app_args(tmp_path_factory.mktemp(INTAKE_APP), ["tiny-t2v", LIFECYCLE_MODEL, "tiny-i2v"])
    args["models"][0] |= {"default_for": ["t2v", "t2i"], "max_queued_jobs": 1}
    args["models"][1] |= {"max_queued_jobs": LIFECYCLE_LIMIT}
    args["media_urls"] = {"allow_http": True, "allow_private_networks": True, "max_mb": 1, "timeout_s": 5}
    serve.run(build_app(args), name=INTAKE_APP, route_prefix=f"/{INTAKE_APP}")
    with httpx.Client(base_url=f"{cluster_url}/{INTAKE_APP}", timeout=60) as client:
        yield client
    serve.delete(INTAKE_APP, _blocking=False)
