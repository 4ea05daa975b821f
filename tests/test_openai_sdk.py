"""The official `openai` SDK against the shared app, unchanged: create, poll, download, list and delete a video,
an image reference uploaded as multipart, and a newcomer's first 480p request."""

from __future__ import annotations

import io
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.media import png, probe
from tests.support.jobs import ENDED, polled


def test_openai_sdk_create_poll_download_list_delete(serve_url: str, tmp_path) -> None:
    client = OpenAI(base_url=f"{serve_url}/v1", api_key="unused")
    video = client.videos.create(prompt="a paper boat", model="tiny-t2v", seconds="4", size="64x32",
                                 extra_body={"num_inference_steps": 2, "seed": 5})
    assert video.status == "queued" and video.seconds == "4"
    video = polled(lambda: client.videos.retrieve(video.id), lambda v: v.status in ENDED, 120, f"{video.id} to end")
    assert video.status == "completed" and video.progress == 100
    client.videos.download_content(video.id).write_to_file(tmp_path / "out.mp4")
    frames, fps, _ = probe((tmp_path / "out.mp4").read_bytes())
    assert frames.shape == (65, 32, 64, 3) and fps == 16  # 4 s at 16 fps on the 4k+1 grid
    thumb = client.videos.download_content(video.id, variant="thumbnail").read()
    assert Image.open(io.BytesIO(thumb)).format == "WEBP"
    page = client.videos.list(limit=100, order="desc")
    assert video.id in [v.id for v in page.data]
    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_openai_sdk_uploads_an_image_reference(serve_url: str) -> None:
    client = OpenAI(base_url=f"{serve_url}/v1", api_key="unused")
    video = client.videos.create(prompt="pan left", input_reference=("cat.png", png(), "image/png"), size="64x32",
                                 extra_body={"num_frames": 5})
    assert (video.model, video.status) == ("tiny-i2v", "queued")


def test_a_newcomers_first_480p_request_works_on_the_embedded_default(serve_url: str, tmp_path: Path) -> None:
    """Tiny twins take their real variants' sizes (tiny stays their default): 480p through the openai SDK."""
    client = OpenAI(base_url=f"{serve_url}/v1", api_key="unused")
    video = client.videos.create(prompt="a harbour at dawn", model="tiny-t2v", size="832x480",
                                 extra_body={"num_frames": 9, "seed": 2})
    video = polled(lambda: client.videos.retrieve(video.id), lambda v: v.status in ENDED, 240, f"{video.id} to end")
    assert video.status == "completed", video.error
    client.videos.download_content(video.id).write_to_file(tmp_path / "480p.mp4")
    frames, _, _ = probe((tmp_path / "480p.mp4").read_bytes())
    assert frames.shape == (9, 480, 832, 3)
