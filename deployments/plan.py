"""A Plan: the router's output, an explicit ordered list of typed stages stored on the job, and what it runs on.

It is returnable without running (a dry run), and the flow runner executes it stage by stage. Each stage's
parameters are one pydantic model, shared by the router that writes them, the runner that reads them and
the stage that uses them, so no key is spelled by hand in two places.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal, ParamSpec, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.redact import scrub
from domain.records import Job
from pipelines.extend import Method
from pipelines.options import LoraChoice
from pipelines.request import GenerationCancelled, GenerationRequest, InvalidRequest


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnhanceParams(_Params):
    kind: Literal["t2v", "i2v", "i2v_empty"] = Field(description="which system prompt the enhancer writes with")
    timeout_s: float = Field(description="past this the job goes on with the prompt as sent, and says so")


class GenerateParams(_Params):
    model: str
    task: str
    size: str
    num_frames: int = 1
    images: int = Field(1, description="generations in this stage: a batch makes one image per prompt")
    num_inference_steps: int
    seed: int
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    scheduler: str = "unipc"
    preset: str | None = Field(None, description="the preset its job type (or the request) named")
    loras: list[LoraChoice] = Field(default_factory=list, description="the selectable adapters it runs with")


class ExtendParams(_Params):
    model: str = Field(description="the model that generates the extension windows")
    method: Method
    window: int
    overlap: int
    extensions: int


class InterpolateParams(_Params):
    src_fps: int
    dst_fps: int
    num_frames: int = Field(description="the frames of the input that the output covers")


class Output(_Params):
    """One deliverable of an encode stage: frames [start, stop) of clip `clip`, or a ZIP of outputs above."""

    name: str
    format: Literal["mp4", "png", "zip"]
    clip: int = 0
    start: int = 0
    stop: int | None = None
    fps: int | None = None
    thumbnail: str | None = Field(None, description="the name of this output's WEBP thumbnail asset")
    audio: bool = Field(False, description="carry the source clip's audio")
    members: list[str] = Field(default_factory=list, description="a ZIP's outputs, by name")


class EncodeParams(_Params):
    outputs: list[Output]


class UploadParams(_Params):
    prefix: str


class NotifyParams(_Params):
    url: str


class Enhance(_Params):
    kind: Literal["enhance"] = "enhance"
    params: EnhanceParams


class Generate(_Params):
    kind: Literal["generate"] = "generate"
    params: GenerateParams


class Extend(_Params):
    kind: Literal["extend"] = "extend"
    params: ExtendParams


class Interpolate(_Params):
    kind: Literal["interpolate"] = "interpolate"
    params: InterpolateParams


class Encode(_Params):
    kind: Literal["encode"] = "encode"
    params: EncodeParams


class Upload(_Params):
    kind: Literal["upload"] = "upload"
    params: UploadParams


class Notify(_Params):
    kind: Literal["notify"] = "notify"
    params: NotifyParams


Stage = Annotated[Enhance | Generate | Extend | Interpolate | Encode | Upload | Notify, Field(discriminator="kind")]


class Plan(_Params):
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


@dataclass
class Submission:
    """One job handed to the flow runner: its record (not yet stored), its plan and its inputs."""

    job: Job
    plan: Plan
    inputs: FlowInputs


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
                raise StageFailed(kind, scrub(f"{type(exc).__name__}: {exc}")) from exc

        return run

    return wrap
