"""Interpolator: the CPU stage that raises the frame rate with motion-compensated interpolation."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from deployments.plan import stage
from pipelines.interpolate import interpolate


@serve.deployment(max_ongoing_requests=2, ray_actor_options={"num_cpus": 0.5})
class Interpolator:
    @stage("interpolate")
    async def interpolate(self, frames: np.ndarray, src_fps: float, dst_fps: float, num_frames: int) -> np.ndarray:
        """The first `num_frames` frames (the output's length) retimed from `src_fps` to `dst_fps`."""
        return await asyncio.to_thread(interpolate, frames[:num_frames], src_fps, dst_fps)
