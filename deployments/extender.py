"""Extender: the CPU stage that makes a long video by looping a generator over overlapping windows.

It builds each window's conditioning from the frames made so far (`pipelines/extend.py`) and calls the
generator through its handle, so the windows queue and scale like any other generation.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.plan import stage
from pipelines.extend import Method, extension_request
from pipelines.request import GenerationRequest


@serve.deployment(max_ongoing_requests=100, ray_actor_options={"num_cpus": 0})
class Extender:
    def __init__(self, generators: dict[str, DeploymentHandle]) -> None:
        self._generators = generators

    @stage("extend")
    async def extend(
        self, job_id: str, frames: np.ndarray, base: GenerationRequest, *, model: str, method: Method, window: int,
        overlap: int, extensions: int, source: np.ndarray | None = None, source_mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """The initial clip followed by `extensions` windows' new frames: window + (window - overlap) * N."""
        for index in range(1, extensions + 1):
            request, new = await asyncio.to_thread(
                extension_request, base, frames, index, window, overlap, method, source, source_mask)
            made = await self._generators[model].generate.remote(job_id, request, segment=index)
            frames = np.concatenate([frames, made[new]])
        return frames
