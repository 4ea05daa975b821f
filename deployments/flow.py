"""FlowRunner: the one owner of every job, from its creation to its end.

`submit` admits jobs (all or none, with this replica recorded as their owner) and runs each in a task of
its own; every way out of that task (completed, failed, cancelled, the task itself cancelled) decides the job's
end in one place, `_own`, and hands it to `JobTracker.finish`, which records it and does what follows (the end
webhook, the removal of a job deleted while it ran): the runner sends no webhook and deletes no file, so a runner
that dies after the end loses nothing. A replica that is shut down waits for its jobs first (`__del__`, within the
deployment's graceful shutdown); one that dies leaves them to the JobTracker's sweep.

The runner executes a job's Plan stage by stage through DeploymentHandles. Frames never come here: each
stage's DeploymentResponse is handed to the next stage as a top-level argument, so Ray moves the uint8
arrays through the object store from one replica to the other. The runner waits for a stage without
fetching its result, records the next stage on the job (sent, not awaited), and stops there if the job was
cancelled: one `JobTracker.cancelled` call per job answers when it is asked to stop, so that check is local.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError, TaskCancelledError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.plan import (
    Encode,
    Enhance,
    EnhanceParams,
    Extend,
    FlowInputs,
    Generate,
    Interpolate,
    Notify,
    Plan,
    StageFailed,
    Submission,
    Upload,
)
from deployments.redact import scrub
from domain.records import Idempotency, Job, JobStatus
from pipelines.request import GenerationCancelled, InvalidRequest

log = logging.getLogger("ray.serve")
Settle = Callable[[list[DeploymentResponse]], Awaitable[None]]
REPLAY_POLL_S = 1.0  # how often a retried request polls jobs another runner replica owns


@dataclass(frozen=True)
class Ending:
    """How a job ends: what `JobTracker.finish` records."""

    status: JobStatus
    error: tuple[str, str] | None = None
    assets: list[dict[str, Any]] | None = None
    upload: dict[str, Any] | None = None


# The replica that runs each stage, as a job's error names it when that replica dies under the job.
ROLES = {"generate": "generator", "extend": "extender", "interpolate": "interpolator", "encode": "encoder",
         "upload": "uploader"}
# Ray's errors for a replica that died (or cannot be reached) while it had the request: the actor is gone.
LOST = (RayActorError, ReplicaUnavailableError)
LOST_NAMES = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "ReplicaUnavailableError"}  # as StageFailed
# Serve cancels a stage's request when the request that started the job is cancelled (a waiting client left).
CANCELLED_NAMES = {"TaskCancelledError", "RequestCancelledError"}


def ending(exc: BaseException, stage: str) -> Ending:
    """The end of a job that raised `exc` in `stage`."""
    match exc:
        case GenerationCancelled():
            return Ending(JobStatus.CANCELLED, ("cancelled", "cancelled by request"))
        case asyncio.CancelledError():
            return Ending(JobStatus.CANCELLED, ("cancelled", f"the flow runner stopped during {stage}"))
        case InvalidRequest():
            return Ending(JobStatus.FAILED, ("invalid_request", exc.message))
        case _ if _caller_left(exc):
            return Ending(JobStatus.CANCELLED, ("cancelled", f"its caller went away during {stage}"))
        case StageFailed() if exc.message.split(":", 1)[0] in LOST_NAMES:
            # a stage that calls a generator (the extender) saw it die: its own replica lives
            return lost("generator")
        case StageFailed():
            return Ending(JobStatus.FAILED, (f"{exc.stage}_failed", exc.message))
        case _ if _root(exc, LOST) is not None:
            return lost(ROLES.get(stage, stage))
        case _:  # the runner itself broke: blame the stage it was in
            return Ending(JobStatus.FAILED, (f"{stage}_failed", _reason(exc)))


def _caller_left(exc: BaseException) -> bool:
    """Serve cancelled a stage's request, as it does when the request that started the job is cancelled."""
    if isinstance(exc, StageFailed):
        return exc.message.split(":", 1)[0] in CANCELLED_NAMES
    return _root(exc, (TaskCancelledError,)) is not None  # Serve's RequestCancelledError is one too


def lost(role: str) -> Ending:
    """A replica died under the job: say so, without Ray's actor ids, pids and addresses."""
    return Ending(JobStatus.FAILED, (f"{role}_lost", f"the {role} replica running this job died; submit it again"))


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class FlowRunner:
    def __init__(
        self,
        generators: dict[str, DeploymentHandle],
        stages: dict[str, DeploymentHandle],
        tracker: DeploymentHandle,
    ) -> None:
        self._generators = generators
        self._stages = stages  # enhance, extend, interpolate, encode, upload
        self._tracker = tracker
        self._owner = serve.get_replica_context().replica_id.to_full_id_str()  # the actor the sweep checks
        self._tasks: set[asyncio.Task] = set()
        self._waiters = ThreadPoolExecutor(max_workers=64, thread_name_prefix="settle")
        self._settle: Settle = self._settle_in_object_store

    async def submit(self, work: list[Submission], max_active: int, max_per_key: int | None = None,
                     wait: bool = False, idempotency: Idempotency | None = None) -> list[Job]:
        """Admit every job of `work` or none (QueueFull: the model's or the key's limit), start each, and return
        them as created.

        With `wait`, return them once ended instead; a caller that goes away meanwhile cancels them, since
        nobody is left to read their results (the jobs still end, in their own tasks). A retry under the same
        `idempotency` key and body gets the jobs the first request made, and nothing new starts.
        """
        jobs = [replace(w.job, owner=self._owner) for w in work]
        earlier = await self._tracker.create.remote(jobs, max_active, max_per_key, idempotency)
        if earlier is not None:
            return await self._ended(earlier) if wait else earlier
        tasks = [self._start(job.id, w.plan, w.inputs) for job, w in zip(jobs, work, strict=True)]
        if not wait:
            return jobs
        try:
            await asyncio.shield(asyncio.wait(tasks))
        except asyncio.CancelledError:
            log.info("caller of %s went away: cancelling them", [j.id for j in jobs])
            await asyncio.gather(*(self._tracker.cancel.remote(j.id) for j in jobs))
            raise
        return [await self._tracker.get.remote(j.id) for j in jobs]

    async def _ended(self, jobs: list[Job]) -> list[Job]:
        """Jobs an earlier request made, once ended: their tasks here, or (another replica's) polled."""
        ids = {j.id for j in jobs}
        if mine := [t for t in self._tasks if t.get_name() in ids]:
            await asyncio.shield(asyncio.wait(mine))
        while True:
            now = [await self._tracker.get.remote(j.id) for j in jobs]
            if all(j is None or j.status.terminal for j in now):
                return [j for j in now if j is not None]
            await asyncio.sleep(REPLAY_POLL_S)

    def _start(self, job_id: str, plan: Plan, inputs: FlowInputs) -> asyncio.Task:
        task = asyncio.create_task(self._own(job_id, plan, inputs), name=job_id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __del__(self) -> Coroutine[Any, Any, None] | None:
        """Serve's graceful shutdown (a redeploy, a scale-down) awaits what this returns: the end of every job
        this replica owns. Not `async def`, so the garbage collector's call of an idle runner makes no coroutine."""
        tasks = set(getattr(self, "_tasks", ()))
        return self._drain(tasks) if tasks else None

    async def _drain(self, tasks: set[asyncio.Task]) -> None:
        log.info("flow runner shutting down: waiting for %d jobs to end", len(tasks))
        await asyncio.wait(tasks)

    async def _own(self, job_id: str, plan: Plan, inputs: FlowInputs) -> None:
        """Run the job and end it, whatever happens: the one place a job's end is decided."""
        current = ["queued"]
        end = Ending(JobStatus.FAILED, ("flow_failed", "the job ended without an outcome"))
        try:
            assets, upload = await self._execute(job_id, plan, inputs, current)
            end = Ending(JobStatus.COMPLETED, assets=assets, upload=upload)
        except (Exception, asyncio.CancelledError) as exc:
            end = ending(exc, current[0])
            if end.status is JobStatus.FAILED:
                log.warning("job %s failed in %s: %s", job_id, current[0], end.error, extra={"job_id": job_id})
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            await asyncio.shield(self._end(job_id, end))

    async def _end(self, job_id: str, end: Ending) -> None:
        """Hand the end to the tracker, which records it, sends the webhook and removes a job deleted while it ran."""
        try:
            await self._tracker.finish.remote(job_id, end.status, assets=end.assets, error=end.error, upload=end.upload)
        except Exception:
            log.exception("ending job %s", job_id, extra={"job_id": job_id})

    async def _execute(
        self, job_id: str, plan: Plan, inputs: FlowInputs, current: list[str]
    ) -> tuple[list[dict[str, Any]], dict | None]:
        stop = asyncio.create_task(self._asked_to_stop(job_id))
        try:
            return await self._run_stages(job_id, plan, inputs, current, stop)
        finally:
            stop.cancel()

    async def _run_stages(
        self, job_id: str, plan: Plan, inputs: FlowInputs, current: list[str], stop: asyncio.Task[bool]
    ) -> tuple[list[dict[str, Any]], dict | None]:
        clips: list[DeploymentResponse] = []
        encoded: list[DeploymentResponse] = []
        for index, stage in enumerate(plan.stages):
            if isinstance(stage, Notify):
                continue  # the tracker sends it, after the end
            current[0] = stage.kind
            if stop.done() and stop.result():
                raise GenerationCancelled(f"cancelled before {stage.kind}")
            if index:  # the first stage came with the job; the store ignores a stage sent after the job's end
                self._tracker.stage.remote(job_id, stage.kind)
            match stage:
                case Enhance(params=p):
                    inputs = await self._enhance(job_id, p, inputs)
                case Generate(params=p):
                    generator = self._generators[p.model]
                    clips = [generator.generate.remote(job_id, r, segment=i) for i, r in enumerate(inputs.requests)]
                    await self._settle(clips)
                case Extend(params=p):
                    clips = [self._stages["extend"].extend.remote(
                        job_id, clips[0], inputs.extension, model=p.model, method=p.method, window=p.window,
                        overlap=p.overlap, extensions=p.extensions, source=inputs.source,
                        source_mask=inputs.source_mask)]
                    await self._settle(clips)
                case Interpolate(params=p):
                    clips = [self._stages["interpolate"].interpolate.remote(
                        clips[0], p.src_fps, p.dst_fps, p.num_frames)]
                    await self._settle(clips)
                case Encode(params=p):
                    audio = inputs.audio if any(o.audio for o in p.outputs) else None
                    encoded.append(self._stages["encode"].encode.remote(*clips, outputs=p.outputs, audio=audio))
                    await self._settle(encoded[-1:])
                case Upload(params=p):
                    return await self._stages["upload"].upload.remote(p.prefix, *encoded)
        raise ValueError(f"plan for {job_id} has no upload stage")

    async def _asked_to_stop(self, job_id: str) -> bool:
        """True once the tracker says the job is to stop: pushed, so a stage boundary checks a flag, not the tracker.
        A tracker that cannot answer stops nothing (the generator has its own watch; the end is recorded here)."""
        try:
            return await self._tracker.cancelled.remote(job_id)
        except Exception:
            log.exception("job %s: watching for a cancel", job_id, extra={"job_id": job_id})
            return False

    async def _enhance(self, job_id: str, params: EnhanceParams, inputs: FlowInputs) -> FlowInputs:
        """Each generation's prompt rewritten by the enhancer, recorded on the job; a timeout or an error goes on
        with the prompts as sent and says so on the job: enhancement never fails a job."""
        started = time.perf_counter()
        prompts = [r.prompt for r in inputs.requests]
        record: dict[str, Any] = {"source": "none"}
        try:
            answers = await asyncio.wait_for(asyncio.gather(*(
                self._stages["enhance"].enhance.remote(r.prompt, params.kind, r.seed) for r in inputs.requests)),
                params.timeout_s)
            if all(text for text, _ in answers):
                prompts = [text for text, _ in answers]
                record = {"source": answers[0][1], "prompts": prompts}
            else:
                record["error"] = "the enhancer wrote nothing usable; the prompt as sent was used"
        except TimeoutError:
            record["error"] = f"the enhancer took longer than {params.timeout_s:g} s; the prompt as sent was used"
        except Exception as exc:  # the enhancer's own failure is never the job's
            record["error"] = f"the enhancer failed ({_reason(exc)}); the prompt as sent was used"
        record["seconds"] = round(time.perf_counter() - started, 3)
        await self._tracker.annotate.remote(job_id, enhancement=record)
        requests = [replace(r, prompt=text) for r, text in zip(inputs.requests, prompts, strict=True)]
        extension = inputs.extension and replace(inputs.extension, prompt=prompts[0])
        return replace(inputs, requests=requests, extension=extension)

    async def _settle_in_object_store(self, responses: list[DeploymentResponse]) -> None:
        """Wait until the stage's results exist, without fetching them here, and raise the stage's error if it has
        one, so a job fails in the stage that failed (a replica that died is named after its stage)."""
        refs = [await r._to_object_ref() for r in responses]
        await asyncio.get_running_loop().run_in_executor(self._waiters, _settle, refs)


def _settle(refs: list[ray.ObjectRef]) -> None:
    """Block until every ref is ready; raise the error of any that failed. Errors are small objects kept in this
    process (as are small results): only refs with no copy in a node's object store are read, which moves no frames."""
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    stored = ray.experimental.get_object_locations(refs)
    ray.get([ref for ref in refs if not stored[ref]["node_ids"]])


def _root(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first of `exc`'s causes (Ray's `cause`, Python's `__cause__`) that is one of `types`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__
    return None


def _reason(exc: BaseException) -> str:
    """The root cause's message: Ray wraps a replica's exception in its own traceback text, which names actors,
    pids and addresses; only the cause's first line is kept, scrubbed of paths, addresses and ids."""
    cause = getattr(exc, "cause", None) or exc
    return scrub(f"{type(cause).__name__}: {cause}") if str(cause).strip() else type(cause).__name__
