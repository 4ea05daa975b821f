"""A Plan: the router's output, an explicit ordered list of stages stored on the job, and what it runs on.

It is returnable without running (a dry run), and the flow runner executes it stage by stage.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

import numpy as np
from pydantic import BaseModel, Field

from pipelines.request import GenerationCancelled, GenerationRequest, InvalidRequest

StageKind = Literal["generate", "extend", "interpolate", "encode", "upload", "notify"]


class Stage(BaseModel):
    kind: StageKind
    deployment: str
    params: dict[str, Any] = Field(default_factory=dict)


class Plan(BaseModel):
    task: str
    model: str
    total_steps: int = Field(description="denoising steps across every generation: what progress counts")
    stages: list[Stage]


@dataclass
class FlowInputs:
    """What a plan runs on besides its JSON: arrays and bytes, which travel through Ray's object store."""

    requests: list[GenerationRequest]  # one per generation of the generate stage; a batch has several
    extension: GenerationRequest | None = None  # the base request of every extension window
    source: np.ndarray | None = None  # the whole fitted source clip, when it outlasts the first window
    source_mask: np.ndarray | None = None
    audio: bytes | None = None  # the uploaded clip whose audio goes into the combined video


class StageFailed(Exception):
    """A stage raised; the job fails with the stage named. Plain strings, so it pickles across processes."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(stage, message)
        self.stage = stage
        self.message = message

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"


P = ParamSpec("P")
R = TypeVar("R")
PASS_THROUGH = (GenerationCancelled, InvalidRequest, StageFailed)


def stage(kind: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Name a deployment method's failures after its stage, so a job says where it failed."""

    def wrap(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(method)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await method(*args, **kwargs)
            except PASS_THROUGH:
                raise
            except Exception as exc:
                raise StageFailed(kind, f"{type(exc).__name__}: {exc}"[:500]) from exc

        return run

    return wrap
