"""wan-serve's own metrics, exported next to Ray Serve's on every node's Prometheus endpoint.

Ray prefixes each name with `ray_`: `ray_wan_generation_seconds_bucket`, `ray_wan_jobs`, ... Each
deployment creates the ones it records, in its replica, since a Ray metric belongs to its process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ray.serve.metrics import Counter, Gauge, Histogram

from deployments.periodic import every
from domain.records import ACTIVE

# Wan generations take seconds (tiny twins, small clips) to tens of minutes (14B at 720p).
GENERATION_BUCKETS = [0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400]
STEP_BUCKETS = [0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
LOAD_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400]  # tiny twins: seconds; a cold 14B: many minutes
GAUGE_INTERVAL_S = 5.0  # gauges are levels: set again and again, or Ray stops exporting them


class GeneratorMetrics:
    def __init__(self) -> None:
        self.generation_seconds = Histogram(
            "wan_generation_seconds", "wall time of one generation (one window or image)",
            boundaries=GENERATION_BUCKETS, tag_keys=("model", "task"))
        self.step_seconds = Histogram(
            "wan_denoising_step_seconds", "wall time of one denoising step", boundaries=STEP_BUCKETS,
            tag_keys=("model",))
        # A histogram, not a gauge: one observation per replica start, cumulative, so a scrape that comes late
        # still sees it (Ray exports a gauge only while it is being set).
        self.load_seconds = Histogram("wan_model_load_seconds", "time a replica took to load its model",
                                      boundaries=LOAD_BUCKETS, tag_keys=("model",))


class JobMetrics:
    def __init__(self) -> None:
        self.active = Gauge("wan_jobs", "jobs queued or running now, by model and status",
                            tag_keys=("model", "status"))
        self.created = Counter("wan_jobs_created_total", "jobs accepted", tag_keys=("model", "kind"))
        self.finished = Counter("wan_jobs_finished_total", "jobs ended, by how they ended",
                                tag_keys=("model", "kind", "status"))


class JobGauges:
    """The queued / in_progress gauge of every model, set from the store's counts (the one source of truth): by the
    JobTracker on every change of status, and every GAUGE_INTERVAL_S in a thread of its own."""

    def __init__(self, gauge: Gauge, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._gauge = gauge
        self._counts = counts
        self._models: set[str] = set()  # every model a gauge was set for, so it can go back to 0
        self._lock = threading.Lock()  # the tracker's threads refresh at once: `finish`, a step, the clock

    def start(self) -> None:
        every(GAUGE_INTERVAL_S, self.refresh, "gauges")

    def refresh(self) -> None:
        with self._lock:
            counts = self._counts()
            self._models.update(model for model, _ in counts)
            for model in self._models:
                for status in ACTIVE:
                    self._gauge.set(counts.get((model, status), 0), {"model": model, "status": status})


class UploadMetrics:
    def __init__(self) -> None:
        self.failures = Counter("wan_upload_failures_total", "object-store uploads that failed after retries")
