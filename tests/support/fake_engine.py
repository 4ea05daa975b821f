"""A test double of a generator's engine (`deployments/generator.py:Engine`): what the deployment needs of a model,
without one, for tests of the deployment itself (progress, cancellation) where a real tiny twin adds nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pipelines.request import GenerationCancelled, GenerationRequest
from pipelines.variants import Variant


class FakeEngine:
    """Frames of the asked shape (frame i a flat gray of value i), one `on_step` call per denoising step, each
    `step_s` long, and a stop at the step `on_step` answers False at, as a pipeline's step callback stops it.

    Built as the generator builds its engine (`engine(variant, weights, **options)`), so `FakeEngine` itself, or a
    `functools.partial` of it with `step_s`, is a generator's engine factory; `loaded` keeps what it was built with.
    """

    device = torch.device("cpu")

    def __init__(self, variant: Variant, weights: str | None = None, *, step_s: float = 0.0, **options: Any) -> None:
        self.loaded: dict[str, Any] = {"variant": variant.name, "weights": weights, **options}
        self.step_s = step_s
        self.steps_run = 0  # the last step the current generation reached
        self.stepping = threading.Event()  # set once a generation has taken its first step

    def generate(self, request: GenerationRequest, on_step: Callable[[int, int], bool]) -> np.ndarray:
        total = request.num_inference_steps
        for step in range(1, total + 1):
            time.sleep(self.step_s)
            self.steps_run = step
            self.stepping.set()
            if not on_step(step, total):
                raise GenerationCancelled(f"cancelled after step {step} of {total}")
        gray = np.arange(request.num_frames, dtype=np.uint8)[:, None, None, None]
        return np.broadcast_to(gray, (request.num_frames, request.height, request.width, 3)).copy()

    def reset_peak_memory(self) -> None:
        """Nothing to reset: it holds no GPU memory."""

    def peak_memory_mb(self) -> float | None:
        return None
