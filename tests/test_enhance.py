"""Prompt enhancement: the tiny enhancer in-process, the flow runner's enhance stage with a fake enhancer (answers,
times out, fails: the job goes on every time), and an enhanced job over HTTP on the embedded default's shape."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from deployments import flow
from deployments.plan import Submission
from domain.records import Job, JobStatus
from pipelines.enhance import SYSTEM_PROMPTS, load_enhancer
from pipelines.request import InvalidRequest
from serve_app.config import AppConfig
from serve_app.router import Fields, Media, route
from tests.support.app import ENHANCER
from tests.support.fakes import OWNER, FakeHandle, Generator, Stages, Tracker
from tests.support.jobs import until

CONFIG = {"models": [{"name": "tiny-t2v"}], "enhancer": ENHANCER}


def test_the_tiny_enhancer_writes_the_same_words_for_the_same_seed_under_each_system_prompt() -> None:
    enhancer = load_enhancer("tiny", "cpu")
    text = enhancer.enhance("a cat playing in the garden", "t2v", seed=1, max_new_tokens=32)
    assert text and text == enhancer.enhance("a cat playing in the garden", "t2v", seed=1, max_new_tokens=32)
    assert text != enhancer.enhance("a cat playing in the garden", "t2v", seed=2, max_new_tokens=32)
    assert text.isprintable(), "control characters are dropped"
    for kind, system in SYSTEM_PROMPTS.items():
        chat = enhancer.tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                       {"role": "user", "content": "x"}], tokenize=False,
                                                      add_generation_prompt=True)
        assert chat.startswith(f"<|im_start|>system\n{system}") and chat.endswith("<|im_start|>assistant\n"), kind


def test_the_tiny_enhancer_s_reading_of_a_query_is_bounded_in_input_output_and_time() -> None:
    enhancer = load_enhancer("tiny", "cpu")
    long = enhancer.read("Generate a video of a cat. " * 200, max_input_tokens=1024, max_new_tokens=128, max_time=60)
    assert (long.query_tokens, long.new_tokens, long.text) == (5400, 0, "")  # byte-level: a token a character
    assert long.bound == "the query is 5,400 tokens, over its bound of 1,024"
    whole = enhancer.read("x" * 64, max_input_tokens=64, max_new_tokens=16, max_time=60)
    assert (whole.query_tokens, whole.new_tokens) == (64, 16), "at its input bound it is read; it writes until cut"
    assert whole.text and whole.bound == "it reached its bound of 16 new tokens"
    timed = enhancer.read("a video of a cat", max_input_tokens=64, max_new_tokens=128, max_time=0)
    assert timed.new_tokens < 128 and timed.bound == "it reached its bound of 0 s"


def test_enhancement_is_refused_where_no_enhancer_is_configured() -> None:
    config = AppConfig.model_validate({"models": [{"name": "tiny-t2v"}]})
    for fields, param in [(Fields(prompt="x", enhance_prompt=True), "enhance_prompt"),
                          (Fields(prompt="x", job_type="video_fast_enhanced"), "job_type")]:
        with pytest.raises(InvalidRequest) as raised:
            route(config, fields, Media(), "video_1")
        assert raised.value.param == param


def test_an_enhanced_job_type_plans_an_enhance_stage_first_and_runs_its_base_preset() -> None:
    routed = route(AppConfig.model_validate(CONFIG), Fields(prompt="x", job_type="video_fast_enhanced"), Media(), "v")
    first, generate = routed.plan.stages[:2]
    assert first.kind == "enhance" and first.params.kind == "t2v" and first.params.timeout_s == 5
    assert generate.params.preset == "fast" and routed.params.job_type == "video_fast_enhanced"


class Enhancer:
    """A fake PromptEnhancer: answers, holds until the timeout, or fails."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def enhance(self, prompt: str, kind: str, seed: int) -> tuple[str, str]:
        if self.mode == "hold":
            await asyncio.Event().wait()
        if self.mode == "fail":
            raise RuntimeError("CUDA out of memory")
        return f"{prompt}, in golden evening light, the camera slowly dollying in", "Qwen/Qwen2.5-3B-Instruct"


class Recorder(Tracker):
    def annotate(self, job_id: str, **fields: Any) -> Job:
        self.jobs[job_id] = replace(self.jobs[job_id], **fields)
        return self.jobs[job_id]


class Prompts(Generator):
    """Records the prompt each generation was given."""

    prompts: list[str]

    async def generate(self, job_id: str, request: Any, segment: int = 0) -> str:
        self.prompts.append(request.prompt)
        return await super().generate(job_id, request, segment)


def run_enhanced(mode: str, monkeypatch: pytest.MonkeyPatch, timeout_s: float = 5) -> tuple[Job, list[str]]:
    context = SimpleNamespace(replica_id=SimpleNamespace(to_full_id_str=lambda: OWNER))
    monkeypatch.setattr(flow.serve, "get_replica_context", lambda: context)
    config = AppConfig.model_validate(CONFIG | {"enhancer": CONFIG["enhancer"] | {"timeout_s": timeout_s}})
    routed = route(config, Fields(prompt="a cat in the garden", num_frames=5, enhance_prompt=True), Media(), "v1")
    job = Job(id="v1", kind="video", model="tiny-t2v", task="t2v", prompt="a cat in the garden", params=routed.params,
              plan=routed.plan.model_dump())

    async def main() -> tuple[Job, list[str]]:
        tracker, stages = Recorder(), Stages()
        generator = Prompts(tracker)
        generator.prompts = []
        handles = {k: FakeHandle(stages) for k in ("encode", "upload", "notify")} | {"enhance": FakeHandle(
            Enhancer(mode))}
        runner = flow.FlowRunner.func_or_class({"tiny-t2v": FakeHandle(generator)}, handles, FakeHandle(tracker))

        async def settle(responses: list) -> None:
            await asyncio.gather(*responses, return_exceptions=True)

        runner._settle = settle
        await runner.submit([Submission(job=job, plan=routed.plan, inputs=routed.inputs)], max_active=4)
        await asyncio.gather(*runner._tasks)
        return tracker.jobs["v1"], generator.prompts

    return asyncio.run(asyncio.wait_for(main(), timeout=30))


def test_an_enhanced_prompt_is_what_the_model_is_given_and_the_job_keeps_both(monkeypatch: pytest.MonkeyPatch) -> None:
    job, prompts = run_enhanced("answer", monkeypatch)
    assert job.status is JobStatus.COMPLETED and job.prompt == "a cat in the garden"
    enhanced = "a cat in the garden, in golden evening light, the camera slowly dollying in"
    assert prompts == [enhanced]
    assert job.enhancement == {"source": "Qwen/Qwen2.5-3B-Instruct", "prompts": [enhanced],
                               "seconds": job.enhancement["seconds"]}


@pytest.mark.parametrize(("mode", "says"), [("hold", "longer than 0.2 s"), ("fail", "CUDA out of memory")])
def test_an_enhancer_that_times_out_or_fails_leaves_the_prompt_as_sent(monkeypatch: pytest.MonkeyPatch, mode: str,
                                                                     says: str) -> None:
    job, prompts = run_enhanced(mode, monkeypatch, timeout_s=0.2)
    assert job.status is JobStatus.COMPLETED and prompts == ["a cat in the garden"]
    assert job.enhancement["source"] == "none" and says in job.enhancement["error"]
    assert "prompts" not in job.enhancement


def test_an_enhanced_job_over_http_records_its_enhanced_prompt_and_source(client: httpx.Client,
                                                                          tmp_path: Path) -> None:
    r = client.post("/v1/videos", json={"prompt": "a cat playing in the garden", "num_frames": 5,
                                              "job_type": "video_fast_enhanced"})
    assert r.status_code == 200, r.text
    video: dict[str, Any] = {}
    until(lambda: video.update(client.get(f"/v1/videos/{r.json()['id']}").json()) or
          video["status"] in ("completed", "failed", "cancelled"), 120, "the enhanced job to end")
    assert video["status"] == "completed", video
    assert video["prompt"] == "a cat playing in the garden"
    assert video["enhancement_source"] == "tiny" and video["enhanced_prompt"]
    assert video["enhanced_prompt"] != video["prompt"] and video["enhancement_seconds"] > 0
    assert [s["kind"] for s in video["plan"]["stages"]][:2] == ["enhance", "generate"]


def test_route_asks_the_enhancer_to_read_the_words_and_falls_back_to_rules(client: httpx.Client) -> None:
    r = client.post("/v1/route", json={"query": "Generate a video of a cat playing in the garden"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["task"], answer["model"], answer["prompt"]) == ("t2v", "tiny-t2v", "A cat playing in the garden")
    assert "the enhancer's reading was not usable" in answer["reason"]  # the tiny twin writes noise, not JSON
    assert answer["reading"] == "keywords"
    r = client.post("/v1/route", json={"query": "Generate a video of " + "a cat in a garden, " * 150})
    assert r.status_code == 200, r.text  # a query over the input bound: the model is not asked to read it
    assert r.json()["reading"] == "keywords" and "over its bound of 1,024)" in r.json()["reason"]
