"""POST /v1/route: queries in words classified in-process (a table), the fallback to another model when the first
cannot take a job, and over HTTP a query that creates its job and one that falls back while a model is full."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from pipelines.reading import Reading
from pipelines.request import InvalidRequest
from serve_app.config import AppConfig
from serve_app.errors import as_api_error
from serve_app.query import answer_query, enhancer_reading, unavailable_models
from serve_app.router import Media
from serve_app.schemas import RouteRequest
from tests.support.jobs import until

IMAGE = np.zeros((32, 64, 3), np.uint8)
CONFIG = AppConfig.model_validate({"models": [
    {"name": "tiny-t2v", "default_for": ["t2v", "t2i"]}, {"name": "tiny-a14b"}, {"name": "tiny-i2v"},
    {"name": "tiny-vace"}]})
ENHANCED = AppConfig.model_validate(CONFIG.model_dump() | {"enhancer": {"model": "tiny"}})


def ask(query: str, media: Media | None = None, unavailable: dict[str, str] | None = None,
        **prefs: Any) -> dict[str, Any]:
    _, answer, _ = answer_query(CONFIG, RouteRequest(query=query, **prefs), media or Media(), "video_q",
                                unavailable or {})
    return answer.model_dump()


@pytest.mark.parametrize(
    ("query", "media", "prefs", "want"),
    [
        ("Generate a video of a cat playing in the garden", None, {},  # S3's own example
         {"task": "t2v", "model": "tiny-t2v", "prompt": "A cat playing in the garden", "num_frames": 81}),
        ("Draw a picture of a lighthouse at dusk", None, {},
         {"task": "t2i", "model": "tiny-t2v", "prompt": "A lighthouse at dusk", "num_frames": 1}),
        ("Make a 2 second clip of waves crashing on rocks", None, {},
         {"task": "t2v", "prompt": "Waves crashing on rocks", "num_frames": 33, "seconds": "2"}),
        ("Make a 30 second film of a city at night", None, {},  # one window at most: 5 s at 16 fps
         {"task": "t2v", "num_frames": 81, "seconds": "5"}),
        ("I want a 3s cinematic shot of a harbour", None, {"max_duration": 1},
         {"task": "t2v", "num_frames": 17, "prompt": "A harbour"}),
        ("please create an image of a robot reading", None, {"prefer_quality": True},
         {"task": "t2i", "prompt": "A robot reading", "num_inference_steps": 4}),
        ("a red fox running through snow", None, {"prefer_quality": False},
         {"task": "t2v", "prompt": "A red fox running through snow", "num_inference_steps": 2}),
        ("Turn this photo into a video where the person waves", Media(image=IMAGE), {},
         {"task": "i2v", "model": "tiny-i2v", "prompt": "The person waves"}),
        ("Show a video of the sunrise", None, {"model": "tiny-a14b"}, {"task": "t2v", "model": "tiny-a14b"}),
        ("Make the last frame of this video a sunset", Media(last_image=IMAGE), {},
         {"task": "vace", "model": "tiny-vace"}),
        ("What is the capital of France?", None, {}, {"generation": False, "task": None, "model": None}),
    ],
)
def test_queries_in_words_are_classified_and_routed(query: str, media: Media | None, prefs: dict,
                                                    want: dict[str, Any]) -> None:
    answer = ask(query, media, **prefs)
    assert {k: answer[k] for k in want} == want, answer
    assert answer["reason"]


S3_REQUEST = {"query": "Generate a video of a cat playing in the garden", "modality": "text",
              "context": {"prefer_quality": True, "max_duration": 10}}


def test_s3_s_request_as_written_routes_to_text_to_video_as_today_s_form_does() -> None:
    routed, s3, fields = answer_query(CONFIG, RouteRequest.model_validate(S3_REQUEST), Media(), "v", {})
    assert routed and fields and (s3.task, s3.model, s3.prompt) == ("t2v", "tiny-t2v", "A cat playing in the garden")
    assert (fields.job_type, fields.seconds) == ("video_high", 5)  # preferred quality; 10 s is over one window
    _, ours, same = answer_query(CONFIG, RouteRequest(query=S3_REQUEST["query"], prefer_quality=True,
                                                      max_duration=10), Media(), "v", {})
    assert same == fields and ours.model_dump(exclude={"plan"}) == s3.model_dump(exclude={"plan"})  # a seed is drawn


@pytest.mark.parametrize(("query", "modality", "task"), [
    ("Generate a video of a cat", "image", "t2i"),  # video or image: what to make, whatever the words say
    ("Draw a picture of a lighthouse", "video", "t2v"),
    ("Draw a picture of a lighthouse", "text", "t2i"),  # text, S3's kind of input: the words decide
    ("Generate a video of a cat", "text", "t2v"),
])
def test_modality_says_what_to_make_or_that_the_words_decide(query: str, modality: str, task: str) -> None:
    assert ask(query, modality=modality)["task"] == task


def test_a_preference_that_says_otherwise_in_context_is_a_400_naming_the_field() -> None:
    with pytest.raises(ValidationError) as raised:
        RouteRequest.model_validate(S3_REQUEST | {"max_duration": 5})
    error = as_api_error(raised.value)
    assert (error.status, error.param) == (400, "context")
    assert error.message == ("context: context.max_duration is 10.0 but the top-level max_duration is 5.0; send one, "
                             "or the same value in both")
    assert RouteRequest.model_validate(S3_REQUEST | {"max_duration": 10}).max_duration == 10


@pytest.mark.parametrize("query", ["\x0b", "  \t\n", "\x1c\u2003"])  # the fuzz's 500 was "\x0b"
def test_a_query_with_no_words_is_a_400_naming_it(query: str) -> None:
    with pytest.raises(ValidationError) as raised:
        RouteRequest.model_validate({"query": query})
    error = as_api_error(raised.value)
    assert (error.status, error.param) == (400, "query")
    assert "the query has no words" in error.message


def test_a_query_the_named_model_cannot_serve_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as raised:
        ask("Animate the scene in this still", Media(image=IMAGE), model="tiny-a14b")
    assert raised.value.param == "model" and "cannot do i2v" in raised.value.message


def test_a_query_that_asks_for_no_video_gets_an_answer_not_a_job() -> None:
    answer = ask("How do I install Ray?")
    assert answer["generation"] is False and "no video or image" in answer["answer"] and answer["plan"] is None


def test_a_model_that_cannot_take_the_job_gives_way_to_the_next_that_can_and_says_so() -> None:
    answer = ask("Generate a video of a cat", unavailable={"tiny-t2v": "it is at its admission limit (1 of 1 jobs)"})
    assert answer["model"] == "tiny-a14b" and answer["task"] == "t2v"
    assert answer["fallback"] == {"from": "tiny-t2v", "why": "it is at its admission limit (1 of 1 jobs)"}
    assert "tiny-t2v would serve t2v" in answer["reason"]


@pytest.mark.parametrize(
    ("reading", "want"),
    [
        ('{"generate": true, "modality": "image", "seconds": null, "prompt": "A lighthouse at dusk"}',
         {"task": "t2i", "prompt": "A lighthouse at dusk", "reason": "the enhancer (tiny) read it as image"}),
        ('Sure! {"generate": false}', {"generation": False, "task": None}),
        ("\u00e9\u0017 noise", {"task": "t2v", "prompt": "A kite over the sea"}),  # the tiny twin's: rules answer
        ('{"generate": true, "prompt": ""}', {"task": "t2v", "prompt": "A kite over the sea"}),
    ],
)
def test_an_enhancer_s_reading_of_the_words_is_used_when_it_is_usable(reading: str, want: dict[str, Any]) -> None:
    _, answer, _ = answer_query(ENHANCED, RouteRequest(query="Make a video of a kite over the sea"), Media(), "v", {},
                                Reading(reading, 9, 20))
    got = answer.model_dump()
    assert {k: got[k] for k in want if k != "reason"} == {k: v for k, v in want.items() if k != "reason"}
    if "reason" in want:
        assert got["reason"].startswith(want["reason"]) and got["reading"] == "enhancer"
    elif got["generation"]:
        assert "keyword rules: the enhancer's reading was not usable" in got["reason"] and got["reading"] == "keywords"


@pytest.mark.parametrize("bound", ["the query is 5,000 tokens, over its bound of 1,024",
                                   "it reached its bound of 128 new tokens", "it reached its bound of 10 s"])
def test_a_reading_cut_short_by_a_bound_is_not_used_and_the_answer_says_so(bound: str) -> None:
    usable = '{"generate": true, "modality": "image", "seconds": null, "prompt": "A lighthouse at dusk"}'
    _, answer, _ = answer_query(ENHANCED, RouteRequest(query="Make a video of a kite over the sea"), Media(), "v", {},
                                Reading(usable, 5000, 128, bound))
    assert (answer.reading, answer.task, answer.prompt) == ("keywords", "t2v", "A kite over the sea")
    assert f"(keyword rules: the enhancer's reading was not usable ({bound}))" in answer.reason


class SlowEnhancer:
    """An enhancer handle (`.read_intent.remote(...)`) whose reading takes an hour, or fails."""

    def __init__(self, fails: bool = False) -> None:
        self.read_intent, self.fails, self.asked = self, fails, ()

    def remote(self, *args: Any) -> asyncio.Future:
        self.asked = args
        return asyncio.ensure_future(self._answer())

    async def _answer(self) -> Reading:
        if self.fails:
            raise RuntimeError("the replica died")
        await asyncio.sleep(3600)
        return Reading('{"generate": false}', 5)


def test_the_route_gives_the_enhancer_its_bounds_and_stops_waiting_at_the_time_bound() -> None:
    config = AppConfig.model_validate(CONFIG.model_dump() | {"enhancer": {"model": "tiny", "read_timeout_s": 0.001}})
    slow = SlowEnhancer()
    reading = asyncio.run(enhancer_reading(slow, config, "a video of a kite"))
    assert slow.asked == ("a video of a kite", 1024, 128, 0.001), "the replica is given the bounds the wait has"
    assert reading == Reading("", 0, bound="it took longer than its bound of 0.001 s")
    assert asyncio.run(enhancer_reading(SlowEnhancer(fails=True), config, "a video of a kite")) == Reading("", 0)


def test_unavailability_comes_from_the_queue_and_the_replicas() -> None:
    counts = {"tiny-t2v": {"queued": 60, "in_progress": 4}}
    replicas = {"tiny-t2v": {"RUNNING": 1}, "tiny-a14b": {"RUNNING": 1}, "tiny-i2v": {"STARTING": 1},
                "tiny-vace": {"RUNNING": 2}}
    assert unavailable_models(CONFIG, counts, replicas) == {
        "tiny-t2v": "it is at its admission limit (64 of 64 jobs)", "tiny-i2v": "it has no running replica"}


def ended(client: httpx.Client, video_id: str) -> dict[str, Any]:
    video: dict[str, Any] = {}
    until(lambda: video.update(client.get(f"/v1/videos/{video_id}").json()) or
          video["status"] in ("completed", "failed", "cancelled"), 120, f"{video_id} to end")
    return video


def test_s3_s_example_over_http_creates_its_job(intake: httpx.Client) -> None:
    r = intake.post("/v1/route", json={"query": "Generate a video of a cat playing in the garden",
                                          "max_duration": 0.5, "create": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["task"], answer["model"], answer["num_frames"]) == ("t2v", "tiny-t2v", 9)
    video = ended(intake, answer["video"]["id"])
    assert video["status"] == "completed" and video["prompt"] == "A cat playing in the garden"


def test_s3_s_request_as_written_over_http_and_what_it_may_not_say(intake: httpx.Client) -> None:
    r = intake.post("/v1/route", json=S3_REQUEST)
    assert r.status_code == 200, r.text
    assert (r.json()["task"], r.json()["model"], r.json()["reading"]) == ("t2v", "tiny-t2v", "keywords")
    for body, param, message in [
        (S3_REQUEST | {"prefer_quality": False}, "context", "context: context.prefer_quality is True but the "
                                                            "top-level prefer_quality is False"),
        (S3_REQUEST | {"modality": "audio"}, "modality", "modality: 'audio' is not one of 'text', 'video' or 'image'"),
    ]:
        r = intake.post("/v1/route", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert r.json()["error"]["message"].startswith(message), r.text


def test_a_full_model_falls_back_to_the_next_over_http(intake: httpx.Client) -> None:
    busy = intake.post("/v1/videos", json={"prompt": "long", "model": "tiny-t2v", "num_frames": 81,
                                              "num_inference_steps": 200}).json()
    try:
        r = intake.post("/v1/route", json={"query": "a video of a kite", "max_duration": 0.5, "create": True})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == "tiny-a14b" and answer["fallback"]["from"] == "tiny-t2v"
        assert "admission limit" in answer["fallback"]["why"]
        assert ended(intake, answer["video"]["id"])["status"] == "completed"
    finally:
        intake.post(f"/v1/videos/{busy['id']}/cancel")
        ended(intake, busy["id"])
