"""Interpolator: the CPU stage that raises the frame rate with motion-compensated interpolation."""

from __future__ import annotations

import asyncio
import math

import cv2
import numpy as np
import ray
from ray import serve

from deployments.plan import stage
from pipelines.interpolate import interpolate


def opencv_threads(num_cpus: float) -> int:
    """OpenCV's pool size for a replica that holds `num_cpus` CPUs: its whole CPUs, at least one."""
    return max(1, math.floor(num_cpus))


@serve.deployment(max_ongoing_requests=2, ray_actor_options={"num_cpus": 0.5})
class Interpolator:
    def __init__(self) -> None:
        # OpenCV starts a thread per core of the node whatever Ray reserved, so replicas sharing a node would
        # take each other's cores; the CPUs Ray assigned are the `num_cpus` this replica was started with.
        cv2.setNumThreads(opencv_threads(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))

    @stage("interpolate")
    async def interpolate(self, frames: np.ndarray, src_fps: float, dst_fps: float, num_frames: int) -> np.ndarray:
        """The first `num_frames` frames (the output's length) retimed from `src_fps` to `dst_fps`."""
        return await asyncio.to_thread(interpolate, frames[:num_frames], src_fps, dst_fps)
