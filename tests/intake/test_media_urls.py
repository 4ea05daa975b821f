"""The outbound guard through the HTTP API, on the intake app (conftest.py): a webhook_url to an internal
address is a 400 naming it (and no job), and media fields given as URLs are fetched (an i2v job from a PNG on a
local server completes) or refused with a 4xx naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.media import probe
from tests.support.jobs import wait_for
from tests.support.loopback import CHUNK, CHUNKS, Origin, origin_server

INTERNAL_HOOKS = ["http://169.254.169.254/latest/meta-data", "http://2130706433:8265/", "http://localhost:8265/"]


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with origin_server() as org:
        yield org


def refused(response: httpx.Response, status: int, param: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error


@pytest.mark.parametrize("hook", INTERNAL_HOOKS)
def test_a_webhook_to_an_internal_address_is_refused_and_creates_nothing(intake: httpx.Client, hook: str) -> None:
    before = intake.get("/v1/videos").json()["data"]
    error = refused(intake.post("/v1/videos", json={"prompt": "x", "num_frames": 5, "webhook_url": hook}),
                    400, "webhook_url")
    assert error["code"] == "url_not_allowed"
    if "localhost" in hook:
        assert "127.0.0.1" not in error["message"], "the host as given, never what it resolved to"
    refused(intake.post("/v1/images/batches", json={"prompts": ["x"], "webhook_url": hook}), 400, "webhook_url")
    assert intake.get("/v1/videos").json()["data"] == before


def test_an_image_by_url_makes_a_video(intake: httpx.Client, origin: Origin) -> None:
    origin.seen.clear()
    video = intake.post("/v1/videos", json={"prompt": "the cat turns", "num_frames": 9,
                                             "input_reference": origin.url("/image.png")})
    assert video.status_code == 200, video.text
    video = wait_for(intake, video.json()["id"])
    assert (video["status"], video["task"]) == ("completed", "i2v"), video
    frames, _, codec = probe(intake.get(f"/v1/videos/{video['id']}/content").content)
    assert codec == "h264" and frames.shape == (9, 32, 64, 3)
    assert [path for path, _ in origin.seen] == ["/image.png"]


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/missing", 400, "fetch_failed"),
    ("/redirect", 400, "fetch_failed"),
    ("/chunked", 413, "too_large"),
])
def test_a_media_url_that_fails_is_a_4xx_naming_the_field(intake: httpx.Client, origin: Origin, path: str,
                                                           status: int, code: str) -> None:
    assert CHUNKS * CHUNK > 2**20, "/chunked is over the app's 1 MiB cap"
    error = refused(intake.post("/v1/videos", json={"prompt": "x", "input_reference": origin.url(path)}),
                    status, "input_reference")
    assert error["code"] == code


@pytest.mark.parametrize("host", ["0.0.0.0", "224.0.0.1", "[ff02::1]"])
def test_a_media_url_to_a_refused_address_is_a_400(intake: httpx.Client, origin: Origin, host: str) -> None:
    """Even opted in to private networks, unspecified (0.0.0.0 reaches loopback on Linux) and multicast are closed."""
    origin.seen.clear()
    error = refused(intake.post("/v1/videos", json={"prompt": "x", "last_image": origin.url("/image.png", host)}),
                    400, "last_image")
    assert error["code"] == "url_not_allowed" and origin.seen == []
