"""Wan2.2-Animate: classification and inputs in the router, and the tiny twin end to end over HTTP (animate and
replace), its MP4 decoded."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from pipelines.request import InvalidRequest
from pipelines.variants import Task
from serve_app.config import AppConfig
from serve_app.router import Fields, Media, route
from tests.media import mp4, png, probe
from tests.support.jobs import until

IMAGE = np.zeros((32, 64, 3), np.uint8)
CONFIG = AppConfig.model_validate({"models": [{"name": "tiny-t2v"}, {"name": "tiny-vace"}, {"name": "tiny-animate"}]})


def driving(frames: int, fps: float = 30.0, side: int = 16) -> dict[str, Any]:
    pose = np.zeros((frames, 32, 64, 3), np.uint8)
    face = np.zeros((frames, side, side, 3), np.uint8)
    return {"pose_video": pose, "pose_fps": fps, "face_video": face, "face_fps": fps}


def test_pose_and_face_videos_route_to_animate_cut_to_the_grid() -> None:
    routed = route(CONFIG, Fields(prompt="dance"), Media(image=IMAGE, **driving(23)), "video_a")
    [request] = routed.inputs.requests
    assert (routed.variant.name, request.task) == ("tiny-animate", Task.ANIMATE)
    assert request.num_frames == 21 and request.pose_video.shape == (21, 32, 64, 3)  # 23 frames: 21 on the grid
    assert request.face_video.shape == (21, 16, 16, 3)
    assert routed.params.fps == 30


def test_a_background_and_its_mask_make_a_replacement_and_are_retimed() -> None:
    media = Media(image=IMAGE, video=np.zeros((9, 32, 64, 3), np.uint8), video_fps=16.0,
                  mask=np.full((9, 32, 64, 3), 255, np.uint8), mask_fps=16.0, **driving(17))
    [request] = route(CONFIG, Fields(prompt="dance"), media, "video_r").inputs.requests
    assert request.task is Task.ANIMATE and request.video.shape[0] == request.mask.shape[0] == 17


@pytest.mark.parametrize(
    ("fields", "media", "param"),
    [
        (Fields(prompt="x"), Media(**driving(9)), "input_reference"),
        (Fields(prompt="x"), Media(image=IMAGE, pose_video=np.zeros((9, 32, 64, 3), np.uint8)), "face_video"),
        (Fields(prompt="x", num_frames=13), Media(image=IMAGE, **driving(9)), "pose_video"),
        (Fields(prompt="x", extensions=1), Media(image=IMAGE, **driving(9)), "extensions"),
        (Fields(prompt="x", model="tiny-animate"), Media(image=IMAGE), "pose_video"),
    ],
)
def test_animate_inputs_that_cannot_work_are_400s_naming_the_field(fields: Fields, media: Media,
                                                                     param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        route(CONFIG, fields, media, "video_x")
    assert raised.value.param == param


def finished(client: httpx.Client, video_id: str) -> dict[str, Any]:
    video: dict[str, Any] = {}
    until(lambda: video.update(client.get(f"/v1/videos/{video_id}").json()) or
          video["status"] in ("completed", "failed", "cancelled"), 120, f"{video_id} to end")
    assert video["status"] == "completed", video
    return video


@pytest.mark.parametrize("replace", [False, True], ids=["animate", "replace"])
def test_an_animation_over_http_is_an_mp4_of_the_driving_length_at_30_fps(client: httpx.Client,
                                                                           replace: bool) -> None:
    files = {"input_reference": ("character.png", png(), "image/png"),
             "pose_video": ("pose.mp4", mp4(frames=13, fps=30), "video/mp4"),
             "face_video": ("face.mp4", mp4(frames=13, width=32, height=32, fps=30), "video/mp4")}
    if replace:
        files |= {"video": ("background.mp4", mp4(frames=13, fps=30), "video/mp4"),
                  "mask": ("mask.mp4", mp4(frames=13, fps=30, value=255), "video/mp4")}
    r = client.post("/v1/videos", data={"prompt": "the character dances"}, files=files)
    assert r.status_code == 200, r.text
    video = finished(client, r.json()["id"])
    assert (video["model"], video["task"], video["fps"], video["num_frames"]) == ("tiny-animate", "animate", 30, 13)
    frames, fps, codec = probe(client.get(f"/v1/videos/{video['id']}/content").content)
    assert frames.shape == (13, 32, 64, 3) and fps == 30 and codec == "h264"
    assert video["step"] == video["total_steps"] == 4
    assert video["processing_time"] > 0 and video["reference_mode"] is None
    assert [(a["asset_index"], a["task"], a["negative_prompt_used"]) for a in video["assets"]] == \
        [(0, "animate", True), (1, "animate", True)]  # the video and its thumbnail
