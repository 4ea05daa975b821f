"""WanGenerator: one deployment class, bound once per variant; each replica loads its engine (the model) once.

The engine comes from a factory (`engine`, default `pipelines.generate.load_engine`), as Ray's `LLMServer` takes its
`engine_cls`: a test puts a fake engine behind the deployment (`tests/support/fake_engine.py`) and drives progress
and cancellation through it without a model.

The pipeline call runs in a worker thread so the replica's event loop stays free (health checks,
metrics); `max_ongoing_requests: 1` because a diffusers pipeline is not thread-safe.

A denoising step never waits on the job tracker: step reports are sent and not awaited, at most one per
REPORT_INTERVAL_S (`StepReports`), and a cancel comes the other way, pushed by one `JobTracker.cancelled` call per
generation that answers when the job is asked to stop; the step callback reads a flag it sets, so a cancel stops
the job at the end of the step it arrives in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import ray
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.metrics import GeneratorMetrics
from deployments.plan import stage
from pipelines.generate import StepCallback, load_engine
from pipelines.loading import Offload
from pipelines.options import LoraSpec, SpeedOptions
from pipelines.request import GenerationCancelled, GenerationRequest
from pipelines.variants import get_variant

log = logging.getLogger("ray.serve")
# Steps shorter than this are reported together: each report is a tracker write and a push to every listener, about
# 10 ms of the generator's time on 2 shared cores, so reports every 0.2 s cost a tiny model's job 5-6% (2026-12-04,
# HTTP jobs of 200 steps with and without them). Twice a second is as often as a progress bar redraws; a real
# model's step (seconds) is reported each time.
REPORT_INTERVAL_S = 0.5


class Engine(Protocol):
    """What a generator replica runs: a request's frames (FxHxWx3 uint8), with `on_step(done, total)` called after
    each denoising step, stopping with `GenerationCancelled` when it answers False; and its peak GPU memory."""

    @property
    def device(self) -> torch.device: ...

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> np.ndarray: ...

    def reset_peak_memory(self) -> None: ...

    def peak_memory_mb(self) -> float | None: ...


EngineFactory = Callable[..., Engine]  # as `load_engine`: (variant, weights, *, dtype, device, ...) -> Engine


class StepReports:
    """A generation's step reports: one sent (never awaited) when REPORT_INTERVAL_S has passed since the last, and
    always the last step and the step a stop is seen at, so the job records how far it really got."""

    def __init__(self, send: Callable[[int, int], object], interval_s: float = REPORT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._interval_s = interval_s
        self._clock = clock
        self._sent_at = -math.inf  # the first step is reported at once
        self._held: tuple[int, int] | None = None

    def step(self, done: int, total: int, stopping: bool) -> None:
        now = self._clock()
        if stopping or done >= total or now - self._sent_at >= self._interval_s:
            self._held = None
            self._sent_at = now
            self._send(done, total)
        else:
            self._held = done, total

    def flush(self) -> None:
        """Send the step held back, if any: a generation that raised still records its last step."""
        if self._held is not None:
            self._send(*self._held)
            self._held = None


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
        engine: EngineFactory = load_engine,
    ) -> None:
        started = time.perf_counter()
        self._engine = engine(
            get_variant(model), weights, dtype=dtype, device=device,
            gpu_memory_fraction=gpu_memory_fraction, cpu_offload=cpu_offload, loras=loras or [], speed=speed,
        )
        self._tracker = tracker
        self._metrics = GeneratorMetrics()
        self._tags = {"model": model}
        self._metrics.load_seconds.observe(time.perf_counter() - started, self._tags)
        # The device is what torch sees; Ray's GPU ids are the card(s) it placed this replica on.
        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        cap = gpu_memory_fraction if self._engine.device.type == "cuda" else None
        log.info("%s loaded on %s in %.1f s (Ray GPU ids %s, memory fraction %s)", model, self._engine.device,
                 time.perf_counter() - started, gpus, cap)

    @stage("generate")
    async def generate(self, job_id: str, request: GenerationRequest, segment: int = 0) -> np.ndarray:
        """Frames (FxHxWx3 uint8) for `request`, reporting each step to the job tracker.

        `segment` numbers the generations of one job (a batch's images, a long video's windows), so
        progress adds them up.
        """
        # Asked before the first step, and waited for: a job cancelled while queued never starts.
        if not await self._tracker.step.remote(job_id, 0, request.num_inference_steps, segment):
            raise GenerationCancelled("cancelled before it started")
        stop = threading.Event()
        watch = asyncio.create_task(self._watch_cancel(job_id, stop))
        work = asyncio.ensure_future(asyncio.to_thread(self._run, job_id, request, segment, stop))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The caller gave up (its client or its flow runner gone): the thread stops at its next step, and this
            # replica's one slot stays taken until it has, since the pipeline serves one call at a time.
            stop.set()
            await asyncio.wait({work})
            if (error := work.exception()) is not None:
                log.info("job %s: its caller is gone: %s: %s", job_id, type(error).__name__, error,
                         extra={"job_id": job_id})
            raise
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _watch_cancel(self, job_id: str, stop: threading.Event) -> None:
        """Set `stop` once the tracker says the job is to stop (a cancel, a delete, its end elsewhere)."""
        try:
            if await self._tracker.cancelled.remote(job_id):
                stop.set()
        except Exception:  # the tracker away: the generation goes on, and its owner still ends the job
            log.exception("job %s: watching for a cancel", job_id, extra={"job_id": job_id})

    def _run(self, job_id: str, request: GenerationRequest, segment: int, stop: threading.Event) -> np.ndarray:
        last = [time.perf_counter()]
        reports = StepReports(lambda done, total: self._tracker.step.remote(job_id, done, total, segment))

        def on_step(done: int, total: int) -> bool:
            now = time.perf_counter()
            self._metrics.step_seconds.observe(now - last[0], self._tags)
            last[0] = now
            stopping = stop.is_set()
            reports.step(done, total, stopping)
            return not stopping

        started = time.perf_counter()
        self._engine.reset_peak_memory()
        try:
            frames = self._engine.generate(request, on_step)
        finally:
            reports.flush()
        seconds = time.perf_counter() - started
        if (peak := self._engine.peak_memory_mb()) is not None:
            self._tracker.gpu_peak.remote(job_id, round(peak))
        self._metrics.generation_seconds.observe(seconds, {**self._tags, "task": request.task.value})
        log.info("job %s: %s segment %d, %d frames in %.2f s", job_id, request.task.value, segment, len(frames),
                 seconds, extra={"job_id": job_id})
        return frames
