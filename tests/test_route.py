"""POST /v1/route: queries in words classified in-process (a table), the fallback to another model when the first
cannot take a job, and over HTTP a query that creates its job and one that falls back while a model is full."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from ray import serve

from pipelines.request import InvalidRequest
from serve_app.app import build_app
from serve_app.config import AppConfig
from serve_app.query import answer_query, unavailable_models
from serve_app.router import Media
from serve_app.schemas import RouteRequest
from tests.support.app import app_args
from tests.support.jobs import until

APP = "route"
IMAGE = np.zeros((32, 64, 3), np.uint8)
CONFIG = AppConfig.model_validate({"models": [
    {"name": "tiny-t2v", "default_for": ["t2v", "t2i"]}, {"name": "tiny-a14b"}, {"name": "tiny-i2v"},
    {"name": "tiny-vace"}]})


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
    config = AppConfig.model_validate(CONFIG.model_dump() | {"enhancer": {"model": "tiny"}})
    _, answer, _ = answer_query(config, RouteRequest(query="Make a video of a kite over the sea"), Media(), "v", {},
                                reading)
    got = answer.model_dump()
    assert {k: got[k] for k in want if k != "reason"} == {k: v for k, v in want.items() if k != "reason"}
    if "reason" in want:
        assert got["reason"].startswith(want["reason"])
    elif got["generation"]:
        assert "keyword rules: the enhancer's reading was not usable" in got["reason"]


def test_unavailability_comes_from_the_queue_and_the_replicas() -> None:
    counts = {"tiny-t2v": {"queued": 60, "in_progress": 4}}
    replicas = {"tiny-t2v": {"RUNNING": 1}, "tiny-a14b": {"RUNNING": 1}, "tiny-i2v": {"STARTING": 1},
                "tiny-vace": {"RUNNING": 2}}
    assert unavailable_models(CONFIG, counts, replicas) == {
        "tiny-t2v": "it is at its admission limit (64 of 64 jobs)", "tiny-i2v": "it has no running replica"}


@pytest.fixture(scope="module")
def route_app(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """tiny-t2v takes one job at a time; tiny-a14b also does t2v."""
    args = app_args(tmp_path_factory.mktemp(APP), ["tiny-t2v", "tiny-a14b"])
    args["models"][0] |= {"default_for": ["t2v", "t2i"], "max_queued_jobs": 1}
    serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
    with httpx.Client(base_url=f"{serve_url}/{APP}", timeout=60) as client:
        yield client
    serve.delete(APP)


def ended(client: httpx.Client, video_id: str) -> dict[str, Any]:
    video: dict[str, Any] = {}
    until(lambda: video.update(client.get(f"/v1/videos/{video_id}").json()) or
          video["status"] in ("completed", "failed", "cancelled"), 120, f"{video_id} to end")
    return video


def test_s3_s_example_over_http_creates_its_job(route_app: httpx.Client) -> None:
    r = route_app.post("/v1/route", json={"query": "Generate a video of a cat playing in the garden",
                                          "max_duration": 0.5, "create": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["task"], answer["model"], answer["num_frames"]) == ("t2v", "tiny-t2v", 9)
    video = ended(route_app, answer["video"]["id"])
    assert video["status"] == "completed" and video["prompt"] == "A cat playing in the garden"


def test_a_full_model_falls_back_to_the_next_over_http(route_app: httpx.Client) -> None:
    busy = route_app.post("/v1/videos", json={"prompt": "long", "model": "tiny-t2v", "num_frames": 81,
                                              "num_inference_steps": 200}).json()
    try:
        r = route_app.post("/v1/route", json={"query": "a video of a kite", "max_duration": 0.5, "create": True})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == "tiny-a14b" and answer["fallback"]["from"] == "tiny-t2v"
        assert "admission limit" in answer["fallback"]["why"]
        assert ended(route_app, answer["video"]["id"])["status"] == "completed"
    finally:
        route_app.post(f"/v1/videos/{busy['id']}/cancel")
        ended(route_app, busy["id"])
