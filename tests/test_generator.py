"""The generator deployment around a fake engine (`tests/support/fake_engine.py`): what it adds to a model, step
reports to the job tracker and a cancel pushed back into the denoising loop, without a model; the real tiny twins run
in the whole-graph tests. The deployment class runs in-process, as Serve would run it, over a test double of the
tracker's handle."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import ray

from deployments import generator
from pipelines.request import GenerationCancelled, GenerationRequest
from pipelines.variants import Task
from tests.support.fake_engine import FakeEngine

STEPS = 40
REQUEST = GenerationRequest(task=Task.T2V, prompt="a red kite", width=48, height=32, num_frames=5,
                            num_inference_steps=STEPS, guidance_scale=5.0, seed=7, flow_shift=3.0)


class FakeTrackerHandle:
    """A test double of the JobTracker's handle as a generator calls it: `step` from the event loop (awaited) and
    from the generation's thread (sent, not awaited), and `cancelled`, which answers once `cancel` is called."""

    def __init__(self, started: bool = True) -> None:
        self.steps: list[tuple[str, int, int, int]] = []
        self._started = started
        self._lock = threading.Lock()
        self._cancel = asyncio.Event()
        self.step = SimpleNamespace(remote=self._step)
        self.cancelled = SimpleNamespace(remote=self._cancelled)
        self.gpu_peak = SimpleNamespace(remote=lambda job_id, mb: None)

    def _step(self, job_id: str, done: int, total: int, segment: int) -> Any:
        with self._lock:
            self.steps.append((job_id, done, total, segment))
        return _Answer(self._started)

    async def _cancelled(self, job_id: str) -> bool:
        await self._cancel.wait()
        return True

    def cancel(self) -> None:
        self._cancel.set()


class _Answer:
    """An answer that may be awaited, as a DeploymentResponse may, or dropped, as a step report is."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        yield from ()
        return self.value


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica reads its GPU ids from Ray's runtime context, which would start Ray in this process."""
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_accelerator_ids=lambda: {}))


def _replica(tracker: FakeTrackerHandle, step_s: float = 0.0) -> tuple[Any, list[FakeEngine]]:
    """The deployment's class as Serve builds a replica, with a fake engine factory that keeps what it made."""
    made: list[FakeEngine] = []

    def engine(*args: Any, **options: Any) -> FakeEngine:
        made.append(FakeEngine(*args, step_s=step_s, **options))
        return made[-1]

    replica = generator.WanGenerator.func_or_class(model="tiny-t2v", tracker=tracker, weights="/w", dtype="float32",
                                                   engine=engine)
    return replica, made


def _run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=30))


def test_frames_come_back_and_every_report_reaches_the_tracker() -> None:
    tracker = FakeTrackerHandle()
    replica, [engine] = _replica(tracker)
    frames = _run(replica.generate("video_1", REQUEST, segment=2))
    assert frames.shape == (5, 32, 48, 3) and frames.dtype == np.uint8 and frames[4].max() == 4
    assert engine.loaded["variant"] == "tiny-t2v" and engine.loaded["weights"] == "/w"
    assert engine.loaded["dtype"] == "float32"  # the binding's load options reach the factory
    assert tracker.steps[0] == ("video_1", 0, STEPS, 2)  # the start, awaited: it moves the job to in_progress
    assert tracker.steps[1] == ("video_1", 1, STEPS, 2) and tracker.steps[-1] == ("video_1", STEPS, STEPS, 2)
    reported = [done for _, done, _, _ in tracker.steps]
    assert reported == sorted(set(reported)) and len(reported) < STEPS  # steps close together are coalesced


def test_a_cancel_stops_the_generation_at_the_step_it_arrives_in() -> None:
    tracker = FakeTrackerHandle()
    replica, [engine] = _replica(tracker, step_s=0.01)

    async def cancelled_midway() -> None:
        running = asyncio.create_task(replica.generate("video_2", REQUEST))
        await asyncio.to_thread(engine.stepping.wait, 10)
        tracker.cancel()
        await running

    with pytest.raises(GenerationCancelled):
        _run(cancelled_midway())
    assert engine.steps_run < STEPS
    assert tracker.steps[-1] == ("video_2", engine.steps_run, STEPS, 0)  # the step it stopped at is recorded


def test_a_job_cancelled_while_queued_never_reaches_the_engine() -> None:
    tracker = FakeTrackerHandle(started=False)  # the tracker answers the first step: not to start
    replica, [engine] = _replica(tracker)
    with pytest.raises(GenerationCancelled):
        _run(replica.generate("video_3", REQUEST))
    assert engine.steps_run == 0 and tracker.steps == [("video_3", 0, STEPS, 0)]

