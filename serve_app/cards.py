"""Served models as `GET /v1/models` lists them (apart from `views.py`, which the deployments import: this needs the
app config), with their generators' status as Serve reports it."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from pipelines.variants import CATALOG
from serve_app.config import AppConfig, ModelConfig, generator_name
from serve_app.presets import JOB_TYPES
from serve_app.service_schemas import AdapterCard, ModelCard


def model_card(config: AppConfig, m: ModelConfig, deployment: Any) -> ModelCard:
    """A served model as `GET /v1/models` lists it: the catalog's facts, its placement, Serve's status of its
    generator, its adapters, presets and the preset of each job type."""
    v = CATALOG[m.name]
    return ModelCard(
        id=v.name, created=0, description=v.description, tasks=[t.value for t in v.tasks],
        default_for=[t.value for t in v.tasks if config.default_model(t) == v.name],
        fps=v.fps, sizes={k: f"{w}x{h}" for k, (w, h) in v.sizes.items()}, max_frames=v.max_frames,
        gpus=m.num_gpus, gpu_memory_fraction=m.memory_fraction,
        replicas={"status": deployment.status.value if deployment else "UNKNOWN", "states": replica_states(deployment),
                  "message": deployment.message if deployment else ""},
        adapters=[AdapterCard(name=a.name, fused=a.fuse, scales=a.scales) for a in m.loras],
        presets={name: p.model_dump(exclude_none=True) for name, p in m.all_presets.items()},
        job_types={t: config.preset_name(m, t) for t in JOB_TYPES},
    )


def replica_states(deployment: Any) -> dict[str, int]:
    """A generator deployment's replicas by state, as Serve reports them."""
    return {str(k): n for k, n in deployment.replica_states.items()} if deployment else {}


async def generator_deployments(config: AppConfig) -> dict[str, Any]:
    """Each served model's generator deployment status, from Serve (called in a replica of the app)."""
    status = await asyncio.to_thread(serve.status)
    app = status.applications.get(serve.get_replica_context().app_name)
    deployments = app.deployments if app else {}
    return {m.name: deployments.get(generator_name(m.name)) for m in config.models}
