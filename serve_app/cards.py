"""Served models as `GET /v1/models` lists them (apart from `views.py`, which the deployments import: this needs the
app config), with their generators' status as Serve reports it; and why a queued job waits for its model."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from domain.records import Job, JobStatus
from pipelines.variants import CATALOG
from serve_app.config import AppConfig, ModelConfig, generator_name
from serve_app.presets import JOB_TYPES
from serve_app.service_schemas import AdapterCard, ModelCard, ScalingCard

log = logging.getLogger("ray.serve")
STATUS_TTL_S = 1.0  # how long the gateway reuses Serve's status for job views: each read is a controller call


def model_card(config: AppConfig, m: ModelConfig, deployment: Any) -> ModelCard:
    """A served model as `GET /v1/models` lists it: the catalog's facts, its placement, Serve's status of its
    generator, its scaling, its adapters, presets and the preset of each job type."""
    v = CATALOG[m.name]
    return ModelCard(
        id=v.name, created=0, description=v.description, tasks=[t.value for t in v.tasks],
        default_for=[t.value for t in v.tasks if config.default_model(t) == v.name],
        fps=v.fps, sizes={k: f"{w}x{h}" for k, (w, h) in v.sizes.items()}, max_frames=v.max_frames,
        gpus=m.num_gpus, gpu_memory_fraction=m.memory_fraction,
        replicas={"status": deployment.status.value if deployment else "UNKNOWN", "states": replica_states(deployment),
                  "message": deployment.message if deployment else ""},
        scaling=scaling_card(m, replica_states(deployment)),
        adapters=[AdapterCard(name=a.name, fused=a.fuse, scales=a.scales) for a in m.loras],
        presets={name: p.model_dump(exclude_none=True) for name, p in m.all_presets.items()},
        job_types={t: config.preset_name(m, t) for t in JOB_TYPES},
    )


def scaling_card(m: ModelConfig, states: dict[str, int]) -> ScalingCard:
    """The model's replica bounds and its replicas now, in words: a model at zero says it starts on a job."""
    low, high = m.replica_bounds
    running, starting = states.get("RUNNING", 0), states.get("STARTING", 0)
    if running or starting:
        summary = f"{running} running" + (f", {starting} starting" if starting else "")
    else:
        summary = "0 running: starts on the first job" if low == 0 else "0 running"
    return ScalingCard(min_replicas=low, max_replicas=high, scales_to_zero=low == 0, running=running, summary=summary)


def replica_states(deployment: Any) -> dict[str, int]:
    """A generator deployment's replicas by state, as Serve reports them."""
    return {str(k): n for k, n in deployment.replica_states.items()} if deployment else {}


async def generator_deployments(config: AppConfig) -> dict[str, Any]:
    """Each served model's generator deployment status, from Serve (called in a replica of the app)."""
    status = await asyncio.to_thread(serve.status)
    app = status.applications.get(serve.get_replica_context().app_name)
    deployments = app.deployments if app else {}
    return {m.name: deployments.get(generator_name(m.name)) for m in config.models}


def starting_detail(model: str, states: dict[str, int]) -> str | None:
    """Why a job queued at its generator waits, when the reason is that no replica runs: None when one does."""
    if states.get("RUNNING"):
        return None
    starting = states.get("STARTING", 0)
    if not starting:
        return f"model {model} is starting (0 replicas running, none started yet)"
    return f"model {model} is starting (0 replicas running, {starting} starting)"


class Generators:
    """Serve's status of the generators for job views, read at most once per STATUS_TTL_S per gateway replica, so
    polling clients and event streams do not each call the controller."""

    def __init__(self, config: AppConfig) -> None:
        self._config = config
        self._read_at = -STATUS_TTL_S
        self._states: dict[str, dict[str, int]] = {}
        self._lock = asyncio.Lock()

    async def states(self) -> dict[str, dict[str, int]]:
        async with self._lock:
            if time.monotonic() - self._read_at >= STATUS_TTL_S:
                deployments = await generator_deployments(self._config)
                self._states = {name: replica_states(d) for name, d in deployments.items() if d is not None}
                self._read_at = time.monotonic()
            return self._states

    async def waiting(self, job: Job | None) -> str | None:
        """A queued job's wait in words while it waits at its generator and no replica of that model runs (scaled
        to zero, or starting); None otherwise, and when Serve's status cannot be read."""
        if job is None or job.status is not JobStatus.QUEUED or job.stage != "generate":
            return None
        try:
            states = (await self.states()).get(job.model)
        except Exception:
            log.warning("reading Serve's status for %s", job.id, exc_info=True, extra={"job_id": job.id})
            return None
        return None if states is None else starting_detail(job.model, states)
