"""One app that requires API keys, for the tests of keys, the fuzz and the studio with a key: package-scoped, so it
starts once for the three modules and goes once they are done (an idle app costs the 2 cores a little all the time)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ray import serve

from serve_app.app import build_app
from serve_app.auth import DIGEST_PREFIX, digest
from tests.support.app import ADMIN, FUZZ_KEY, KEY_A, KEY_B, KEYED_APP, STUDIO_KEY, app_args


@pytest.fixture(scope="package")
def keyed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The keyed app's job database and storage root."""
    return tmp_path_factory.mktemp(KEYED_APP)


@pytest.fixture(scope="package")
def keyed_url(cluster_url: str, keyed_root: Path) -> Iterator[str]:
    """Under a route prefix, as a platform team would put one behind a path. Every key sees only its own records
    (KEY_B and STUDIO_KEY are given as digests), ADMIN sees all, and each key may have one active job, so the fuzz's
    creates that pass validation mostly end in a 429 instead of a queue of generations."""
    args = app_args(keyed_root, ["tiny-t2v"])
    hashed = [DIGEST_PREFIX + digest(key) for key in (KEY_B, STUDIO_KEY)]  # as a config may hold them
    args["auth"] = {"api_keys": [KEY_A, FUZZ_KEY, *hashed], "admin_keys": [ADMIN], "required": True,
                    "max_active_jobs_per_key": 1}
    serve.run(build_app(args), name=KEYED_APP, route_prefix=f"/{KEYED_APP}")
    yield f"{cluster_url}/{KEYED_APP}"
    serve.delete(KEYED_APP, _blocking=False)
