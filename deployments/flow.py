"""FlowRunner: executes a job's Plan stage by stage through DeploymentHandles.

Frames never come here: the generator's DeploymentResponse is handed to the encoder as a top-level
argument, so Ray moves the uint8 array through the object store from one replica to the other.
Every job ends completed, failed (with a reason) or cancelled, whatever a stage raises.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.jobstore import JobStatus
from deployments.plan import Plan, Stage
from deployments.storage import ASSET_TYPES, asset_key, open_storage
from pipelines.request import GenerationCancelled, GenerationRequest, InvalidRequest

log = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class FlowRunner:
    def __init__(
        self,
        generators: dict[str, DeploymentHandle],
        encoder: DeploymentHandle,
        tracker: DeploymentHandle,
        storage_kind: str,
        storage_root: str,
    ) -> None:
        self._generators = generators
        self._encoder = encoder
        self._tracker = tracker
        self._storage = open_storage(storage_kind, storage_root)

    async def run(self, job_id: str, plan: Plan, request: GenerationRequest) -> None:
        try:
            assets = await self._execute(job_id, plan, request)
        except GenerationCancelled:
            await self._tracker.finish.remote(job_id, JobStatus.CANCELLED, error=("cancelled", "cancelled by request"))
        except InvalidRequest as exc:
            await self._tracker.finish.remote(job_id, JobStatus.FAILED, error=("invalid_request", exc.message))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            await self._tracker.finish.remote(job_id, JobStatus.FAILED, error=("generation_failed", _reason(exc)))
        else:
            await self._tracker.finish.remote(job_id, JobStatus.COMPLETED, assets=assets)

    async def _execute(self, job_id: str, plan: Plan, request: GenerationRequest) -> dict[str, str]:
        value: Any = None
        for stage in plan.stages:
            value = await self._stage(job_id, stage, request, value)
        return value

    async def _stage(self, job_id: str, stage: Stage, request: GenerationRequest, upstream: Any) -> Any:
        match stage.kind:
            case "generate":
                return self._generators[stage.params["model"]].generate.remote(job_id, request)
            case "encode":
                return self._encoder.encode.remote(upstream, **stage.params)
            case "store":  # follows encode: `upstream` is the encoder's response
                return await asyncio.to_thread(self._store, job_id, await upstream)
        raise ValueError(f"unknown stage {stage.kind!r}")

    def _store(self, job_id: str, encoded: dict[str, bytes]) -> dict[str, str]:
        assets = {name: asset_key(name, job_id) for name in encoded}
        for name, data in encoded.items():
            self._storage.put(assets[name], data, ASSET_TYPES[name][1])
        return assets


def _reason(exc: BaseException) -> str:
    """The root cause's message: Ray wraps a replica's exception in its own traceback text."""
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}"[:500]
