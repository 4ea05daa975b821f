"""POST /v1/route's decision: a query in words (`intent.py`), the inputs it carries and the caller's preferences
become a routed job, with the reason in words; a model that cannot take a job now gives way to the next one that
can do the task, and the answer says so. No HTTP and no Ray: the gateway gathers which models are unavailable."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Literal

from pipelines.reading import Reading
from pipelines.request import InvalidRequest
from pipelines.variants import Task
from serve_app.config import AppConfig
from serve_app.fields import Fields, Media, Routed
from serve_app.intent import Intent, parse_reading, read_intent
from serve_app.router import route
from serve_app.schemas import MEDIA_FIELDS, RouteAnswer, RouteRequest


def answer_query(config: AppConfig, body: RouteRequest, media: Media, job_id: str, unavailable: dict[str, str],
                 reading: Reading | None = None) -> tuple[Routed | None, RouteAnswer, Fields | None]:
    """The routed job (None when the words ask for none), the answer, and the fields it was routed with.

    `unavailable`: why a served model cannot take a job now (no running replica, its admission limit), by name.
    `reading`: the enhancer's reading of the words, when one is configured; keyword rules otherwise, and where the
    reading hit a bound or is not usable.
    """
    intent, reader = _read(config, body.query, reading)
    sent = [name for name in MEDIA_FIELDS if getattr(body, name) is not None]
    if not intent.generate and not sent:
        return None, RouteAnswer(generation=False, answer=intent.answer, reason=intent.reason, reading=reader), None
    modality = intent.modality if body.modality in (None, "text") else body.modality
    quality = None if body.prefer_quality is None else ("high" if body.prefer_quality else "fast")
    fields = Fields(prompt=intent.prompt or body.query, model=body.model, num_frames=1 if modality == "image" else None,
                    job_type=f"{modality or 'video'}_{quality}" if quality else None, session_id=body.session_id,
                    webhook_url=str(body.webhook_url) if body.webhook_url else None)
    routed = route(config, fields, media, job_id)
    variant = routed.variant
    if routed.plan.task != Task.T2I.value and (intent.seconds or body.max_duration):
        longest = variant.seconds_for_frames(variant.max_frames)  # one window: the query did not ask to extend
        wanted = intent.seconds or variant.seconds_for_frames(variant.default_frames)
        fields = replace(fields, seconds=min(wanted, longest, body.max_duration or longest))
        routed = route(config, fields, media, job_id)
    fallback = None
    if variant.name in unavailable and body.model is None:
        for other in (m.name for m in config.models if m.name != variant.name and m.name not in unavailable):
            try:
                candidate = route(config, replace(fields, model=other), media, job_id)
            except InvalidRequest:
                continue  # it cannot do this task with these inputs
            if candidate.plan.task == routed.plan.task:
                fallback = {"from": variant.name, "why": unavailable[variant.name]}
                routed, fields = candidate, replace(fields, model=other)
                break
    task = Task(routed.plan.task)
    reasons = [intent.reason]
    if sent:
        reasons.append(f"the inputs sent ({', '.join(sent)}) make it {task.value}")
    reasons.append(_why_model(config, body, routed.variant.name, task, fallback))
    p = routed.params
    answer = RouteAnswer(generation=True, reason="; ".join(reasons), task=task.value, model=routed.variant.name,
                         fallback=fallback, prompt=fields.prompt, size=p.size, num_frames=p.num_frames,
                         seconds=p.seconds, fps=p.fps, num_inference_steps=p.num_inference_steps,
                         plan=routed.plan.model_dump(), reading=reader)
    return routed, answer, fields


def _read(config: AppConfig, query: str, reading: Reading | None) -> tuple[Intent, Literal["enhancer", "keywords"]]:
    """The words' intent, and what read it: the enhancer where its reading is whole and usable, else the keyword
    rules, whose reason then says why the reading was not used."""
    if reading is None or config.enhancer is None:
        return read_intent(query), "keywords"
    intent = None if reading.bound else parse_reading(reading.text, f"the enhancer ({config.enhancer.model})")
    if intent is not None:
        return intent, "enhancer"
    intent = read_intent(query)
    why = f" ({reading.bound})" if reading.bound else ""
    return replace(intent, reason=f"{intent.reason} (keyword rules: the enhancer's reading was not usable{why})"), \
        "keywords"


def unavailable_models(config: AppConfig, counts: dict[str, dict[str, int]],
                       replicas: dict[str, dict[str, int]]) -> dict[str, str]:
    """Why each served model cannot take a job now: no running replica, or its admission limit reached. A model with
    no running replica is still routed to where no other can do the task: its job waits while a replica starts."""
    why = {}
    for m in config.models:
        active = sum(counts.get(m.name, {}).values())
        if active >= m.max_queued_jobs:
            why[m.name] = f"it is at its admission limit ({active} of {m.max_queued_jobs} jobs)"
        elif not replicas.get(m.name, {}).get("RUNNING"):
            why[m.name] = "it has no running replica" + (" (it scales to zero: one would start for this job)"
                                                         if m.replica_bounds[0] == 0 else "")
    return why


def _why_model(config: AppConfig, body: RouteRequest, name: str, task: Task, fallback: dict[str, str] | None) -> str:
    if fallback is not None:
        return f"{fallback['from']} would serve {task.value} but {fallback['why']}, so {name}, which also does it"
    if body.model is not None:
        return f"{name} was asked for"
    model = config.model(name)
    if model is not None and task in model.default_for:
        return f"{name} is the served default for {task.value}"
    return f"{name} is the first served model that does {task.value}"


async def enhancer_reading(enhancer: Any, config: AppConfig, query: str) -> Reading | None:
    """The enhancer's reading of a query in words (its deployment handle) within the configured bounds: None without
    an enhancer; an empty reading, which the keyword rules answer for, when it fails or is slow. The replica is given
    the same bounds, so one that is given up on stops soon after and takes the next query."""
    if enhancer is None or config.enhancer is None:
        return None
    e = config.enhancer
    response = enhancer.read_intent.remote(query, e.read_max_input_tokens, e.read_max_new_tokens, e.read_timeout_s)
    try:
        return await asyncio.wait_for(response, e.read_timeout_s)
    except TimeoutError:
        response.cancel()
        return Reading("", 0, bound=f"it took longer than its bound of {e.read_timeout_s:g} s")
    except Exception:
        return Reading("", 0)
