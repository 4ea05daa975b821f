"""The node's Prometheus samples, where Ray exports the app's custom metrics and Serve's own."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import APP, replica_logs

Samples = dict[str, list[tuple[dict[str, str], float]]]
SCRAPED = ("ray_wan_", "ray_serve_deployment_request_counter")


def metrics_url() -> str:
    """This node's Prometheus endpoint: the port is Ray's own choice, read back once Ray has bound it."""
    return f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"


def scrape() -> Samples:
    """The samples of wan-serve's metrics and Serve's request counter on the node's Prometheus endpoint, by sample
    name: [(labels, value)]. Only those are parsed: the endpoint keeps the series of every replica the tests' apps
    ever had, and parsing them all takes seconds once many apps have come and gone."""
    text = httpx.get(metrics_url(), timeout=30).text
    wanted = "\n".join(line for line in text.splitlines()
                       if line.removeprefix("# HELP ").removeprefix("# TYPE ").startswith(SCRAPED))
    samples: Samples = {}
    for family in text_string_to_metric_families(wanted):
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
