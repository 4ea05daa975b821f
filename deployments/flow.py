"""FlowRunner: executes a job's Plan stage by stage through DeploymentHandles.

Frames never come here: each stage's DeploymentResponse is handed to the next stage as a top-level
argument, so Ray moves the uint8 arrays through the object store from one replica to the other. The
runner waits for a stage to finish without fetching its result, records the next stage on the job, and
stops there if the job was cancelled. Every job ends completed, failed (with the stage named) or
cancelled, whatever a stage raises; a job with a webhook then gets its signed event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.assets import AssetLinks
from deployments.jobstore import Job, JobStatus
from deployments.plan import FlowInputs, Plan, StageFailed
from deployments.storage import S3Config
from pipelines.request import GenerationCancelled, InvalidRequest

log = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class FlowRunner:
    def __init__(
        self,
        generators: dict[str, DeploymentHandle],
        stages: dict[str, DeploymentHandle],
        tracker: DeploymentHandle,
        s3: S3Config | None = None,
        public_url: str = "",
    ) -> None:
        self._generators = generators
        self._stages = stages  # extend, interpolate, encode, upload, notify
        self._tracker = tracker
        self._links = AssetLinks(s3)
        self._public_url = public_url
        self._waiters = ThreadPoolExecutor(max_workers=64, thread_name_prefix="settle")
        self._replica = serve.get_replica_context().replica_id.to_full_id_str()

    async def run(self, job_id: str, plan: Plan, inputs: FlowInputs) -> None:
        current: list[str] = ["queued"]
        finish = self._tracker.finish.remote
        await self._tracker.claim.remote(job_id, self._replica)  # while this replica lives, the job is not lost
        try:
            assets, upload = await self._execute(job_id, plan, inputs, current)
        except GenerationCancelled:
            job = await finish(job_id, JobStatus.CANCELLED, error=("cancelled", "cancelled by request"))
        except InvalidRequest as exc:
            job = await finish(job_id, JobStatus.FAILED, error=("invalid_request", exc.message))
        except StageFailed as exc:
            log.warning("job %s failed in %s: %s", job_id, exc.stage, exc.message, extra={"job_id": job_id})
            job = await finish(job_id, JobStatus.FAILED, error=(f"{exc.stage}_failed", exc.message))
        except Exception as exc:  # a replica died, or the runner itself broke: blame the stage it was in
            log.exception("job %s failed in %s", job_id, current[0], extra={"job_id": job_id})
            job = await finish(job_id, JobStatus.FAILED, error=(f"{current[0]}_failed", _reason(exc)))
        else:
            job = await finish(job_id, JobStatus.COMPLETED, assets=assets, upload=upload)
        notify = next((s for s in plan.stages if s.kind == "notify"), None)
        if notify is not None and job is not None:
            delivery = await self._stages["notify"].notify.remote(notify.params["url"], self._event(job))
            await self._tracker.annotate.remote(job_id, webhook=delivery)

    async def _execute(
        self, job_id: str, plan: Plan, inputs: FlowInputs, current: list[str]
    ) -> tuple[list[dict[str, Any]], dict | None]:
        clips: list[DeploymentResponse] = []
        encoded: list[DeploymentResponse] = []
        for stage in plan.stages:
            if stage.kind == "notify":
                continue
            current[0] = stage.kind
            if not await self._tracker.stage.remote(job_id, stage.kind):
                raise GenerationCancelled(f"cancelled before {stage.kind}")
            p = stage.params
            match stage.kind:
                case "generate":
                    generator = self._generators[p["model"]]
                    clips = [generator.generate.remote(job_id, r, segment=i) for i, r in enumerate(inputs.requests)]
                    await self._settle(clips)
                case "extend":
                    clips = [self._stages["extend"].extend.remote(
                        job_id, clips[0], inputs.extension, model=p["model"], method=p["method"], window=p["window"],
                        overlap=p["overlap"], extensions=p["extensions"], source=inputs.source,
                        source_mask=inputs.source_mask)]
                    await self._settle(clips)
                case "interpolate":
                    clips = [self._stages["interpolate"].interpolate.remote(
                        clips[0], p["src_fps"], p["dst_fps"], p["num_frames"])]
                    await self._settle(clips)
                case "encode":
                    encoded.append(self._stages["encode"].encode.remote(
                        *clips, outputs=p["outputs"], audio=inputs.audio if p.get("audio") else None))
                    await self._settle(encoded[-1:])
                case "upload":
                    return await self._stages["upload"].upload.remote(p["prefix"], *encoded)
        raise ValueError(f"plan for {job_id} has no upload stage")

    async def _settle(self, responses: list[DeploymentResponse]) -> None:
        """Wait until the stage's results exist, without fetching them here (errors surface downstream)."""
        refs = [await r._to_object_ref() for r in responses]
        await asyncio.get_running_loop().run_in_executor(
            self._waiters, lambda: ray.wait(refs, num_returns=len(refs), fetch_local=False))

    def _event(self, job: Job) -> dict[str, Any]:
        """The webhook event: the job and its assets, shaped like OpenAI's webhook events."""
        data = {
            "id": job.id, "object": job.kind, "status": job.status.value, "model": job.model, "task": job.task,
            "prompt": job.prompt, "session_id": job.session_id, "created_at": int(job.created_at),
            "completed_at": int(job.completed_at) if job.completed_at else None, **job.params,
            "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
            "upload": job.upload, "assets": self._links.views(job.kind, job.id, job.assets, self._public_url),
        }
        # One id per job and outcome: it is the webhook-id receivers de-duplicate on, across retries.
        return {"id": f"evt_{job.id}_{job.status.value}", "object": "event", "type": f"{job.kind}.{job.status.value}",
                "created_at": int(time.time()), "data": data}


def _reason(exc: BaseException) -> str:
    """The root cause's message: Ray wraps a replica's exception in its own traceback text."""
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}"[:500]
