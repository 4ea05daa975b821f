"""One app for the tests of autoscaling (test_autoscale.py) and of scale to zero (test_scale_zero.py), each on a
model of its own: package-scoped, so it starts once for both modules and goes once they are done."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.app import BURST, BURST_MODEL, SCALING_APP, ZERO, ZERO_MODEL, app_args, deployed


@pytest.fixture(scope="package")
def scaling(cluster_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """ZERO_MODEL at `min_replicas: 0` and BURST_MODEL at one replica, up to two: both do t2v, ZERO_MODEL first."""
    args = app_args(tmp_path_factory.mktemp(SCALING_APP), [ZERO_MODEL, BURST_MODEL])
    for model, autoscaling in zip(args["models"], (ZERO, BURST), strict=True):
        model["autoscaling_config"] = autoscaling
    with deployed(cluster_url, SCALING_APP, args) as client:
        yield client
