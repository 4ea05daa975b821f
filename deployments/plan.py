"""A Plan: the router's output, an explicit ordered list of stages stored on the job.

It is returnable without running (a dry run), and the flow runner executes it stage by stage.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

StageKind = Literal["generate", "encode", "store"]


class Stage(BaseModel):
    kind: StageKind
    deployment: str
    params: dict[str, Any] = Field(default_factory=dict)


class Plan(BaseModel):
    task: str
    model: str
    stages: list[Stage]
