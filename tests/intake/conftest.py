"""One app for the tests of what a create may name over HTTP, a query in words (test_route.py) and media by URL
(test_media_urls.py): package-scoped, so it starts once for both modules and goes once they are done."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.app import app_args, deployed

APP = "intake"


@pytest.fixture(scope="package")
def intake(cluster_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """tiny-t2v takes one job at a time, and tiny-a14b also does t2v (a full model's fallback); media URLs are
    allowed over http and on loopback (the tests' origin is local); webhooks are left as shipped."""
    args = app_args(tmp_path_factory.mktemp(APP), ["tiny-t2v", "tiny-a14b", "tiny-i2v"])
    args["models"][0] |= {"default_for": ["t2v", "t2i"], "max_queued_jobs": 1}
    args["media_urls"] = {"allow_http": True, "allow_private_networks": True, "max_mb": 1, "timeout_s": 5}
    with deployed(cluster_url, APP, args) as client:
        yield client
