"""WanGenerator: one deployment class, bound once per variant; each replica loads its model once.

The pipeline call runs in a worker thread so the replica's event loop stays free (health checks,
metrics); `max_ongoing_requests: 1` because a diffusers pipeline is not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.metrics import GeneratorMetrics
from deployments.plan import stage
from pipelines.generate import generate
from pipelines.loading import Offload, load_model
from pipelines.options import LoraSpec, SpeedOptions
from pipelines.request import GenerationCancelled, GenerationRequest
from pipelines.variants import get_variant

REPORT_TIMEOUT_S = 30.0
log = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=1)
class WanGenerator:
    def __init__(
        self,
        model: str,
        tracker: DeploymentHandle,
        weights: str | None = None,
        dtype: str = "bfloat16",
        device: str | None = None,
        gpu_memory_fraction: float | None = None,
        cpu_offload: Offload = False,
        loras: list[LoraSpec] | None = None,
        speed: SpeedOptions | None = None,
    ) -> None:
        started = time.perf_counter()
        self._model = load_model(
            get_variant(model), weights, dtype=dtype, device=device,
            gpu_memory_fraction=gpu_memory_fraction, cpu_offload=cpu_offload, loras=loras or [], speed=speed,
        )
        self._tracker = tracker
        self._metrics = GeneratorMetrics()
        self._tags = {"model": model}
        self._metrics.load_seconds.observe(time.perf_counter() - started, self._tags)
        # The device is what torch sees; Ray's GPU ids are the card(s) it placed this replica on.
        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        cap = gpu_memory_fraction if self._model.device.type == "cuda" else None
        log.info("%s loaded on %s in %.1f s (Ray GPU ids %s, memory fraction %s)", model, self._model.device,
                 time.perf_counter() - started, gpus, cap)

    @stage("generate")
    async def generate(self, job_id: str, request: GenerationRequest, segment: int = 0) -> np.ndarray:
        """Frames (FxHxWx3 uint8) for `request`, reporting each step to the job tracker.

        `segment` numbers the generations of one job (a batch's images, a long video's windows), so
        progress adds them up.
        """
        return await asyncio.to_thread(self._run, job_id, request, segment)

    def _run(self, job_id: str, request: GenerationRequest, segment: int) -> np.ndarray:
        last = [time.perf_counter()]

        def on_step(done: int, total: int) -> bool:
            now = time.perf_counter()
            if done:
                self._metrics.step_seconds.observe(now - last[0], self._tags)
            last[0] = now
            return self._tracker.step.remote(job_id, done, total, segment).result(timeout_s=REPORT_TIMEOUT_S)

        if not on_step(0, request.num_inference_steps):
            raise GenerationCancelled("cancelled before it started")
        started = time.perf_counter()
        self._model.reset_peak_memory()
        frames = generate(self._model, request, on_step)
        seconds = time.perf_counter() - started
        if (peak := self._model.peak_memory_mb()) is not None:
            self._tracker.gpu_peak.remote(job_id, round(peak))
        self._metrics.generation_seconds.observe(seconds, {**self._tags, "task": request.task.value})
        log.info("job %s: %s segment %d, %d frames in %.2f s", job_id, request.task.value, segment, len(frames),
                 seconds, extra={"job_id": job_id})
        return frames
