"""Limits on every input (issue 11): bodies counted as they stream in, JSON nesting, multipart parts, prompts,
metadata, images and videos bounded from their headers and containers, and a request's cost. In-process first
(a small FastAPI app over `httpx.ASGITransport`, the router, the media decoders), then against the shared app."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from fractions import Fraction
from types import FrameType
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request

from pipelines import video
from pipelines.bounds import MediaBounds, MediaError, MediaOutOfBounds, MediaTooLarge, bounded_frames
from pipelines.request import InvalidRequest
from pipelines.video import decode_image, decode_video, normalize_video
from serve_app import errors
from serve_app.body import BodyLimit, json_too_deep, read_body, read_upload
from serve_app.config import LimitsConfig
from serve_app.limits import media_bounds
from serve_app.media import decode_media, normalize_upload
from serve_app.router import Fields, Media, route, route_batch
from serve_app.schemas import SessionCreateRequest
from tests.media import media_file, mp4, png, png_header, still_mp4
from tests.support.app import app_config

MiB = 2**20
CHUNK = 64 * 1024
PART_HEAD = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'  # then its bytes
SMALL = LimitsConfig(max_body_mb=2, max_file_mb=1, max_form_fields=4, max_json_depth=8)
BOUNDS = media_bounds(LimitsConfig())


# --- the body, in-process ---------------------------------------------------------------------------


def body_app(limits: LimitsConfig) -> FastAPI:
    """The gateway's body handling on its own: the middleware, `read_body`, `read_upload`, a FastAPI-parsed body."""
    app = FastAPI()
    errors.install(app)
    app.add_middleware(BodyLimit)
    app.state.limits = limits

    @app.post("/read")
    async def read(request: Request) -> dict[str, Any]:
        fields, raw = await read_body(request, limits)
        return {"fields": sorted(fields), "files": {k: len(v) for k, v in raw.items()}}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        data, _ = await read_upload(request, limits)
        return {"size": len(data)}

    @app.post("/parsed")
    async def parsed(body: SessionCreateRequest) -> dict[str, int]:
        return {"keys": len(body.metadata)}

    return app


class Source:
    """A chunked request body of `total` bytes, counting what the server pulled: no Content-Length is sent."""

    def __init__(self, total: int, head: bytes = b"") -> None:
        self.total, self.head, self.sent = total, head, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        self.sent = len(self.head)
        while self.sent < self.total:
            self.sent += CHUNK
            yield b"a" * CHUNK


def post(app: FastAPI, path: str, **kwargs: Any) -> httpx.Response:
    """A POST to the app in this process, over httpx's ASGI transport (which pulls a streamed body as it is read)."""
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(send())


@pytest.mark.parametrize(("path", "content_type"), [
    ("/read", "application/json"),
    ("/read", "multipart/form-data; boundary=xyz"),
    ("/upload", "multipart/form-data; boundary=xyz"),
    ("/parsed", "application/json"),  # FastAPI reads this one itself
    ("/read", "application/octet-stream"),
])
def test_a_chunked_body_over_the_cap_is_a_413_and_read_no_further(path: str, content_type: str) -> None:
    source = Source(40 * MiB, PART_HEAD)
    r = post(body_app(SMALL), path, content=source, headers={"content-type": content_type})
    if content_type == "application/octet-stream":  # never read: refused for its type, not its size
        assert r.status_code == 400 and source.sent < 2 * MiB
        return
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large" and r.json()["error"]["type"] == "invalid_request_error"
    assert source.sent <= 2 * MiB + CHUNK + len(source.head), f"read {source.sent} bytes past a 2 MiB cap"


@pytest.mark.parametrize("path", ["/read", "/parsed"])
def test_a_declared_length_over_the_cap_is_refused_before_reading(path: str) -> None:
    source = Source(40 * MiB)
    r = post(body_app(SMALL), path, content=source,
                   headers={"content-type": "application/json", "content-length": str(40 * MiB)})
    assert r.status_code == 413 and source.sent == 0


@pytest.mark.parametrize("path", ["/read", "/parsed"])
def test_json_nested_deeper_than_the_limit_is_a_400(path: str) -> None:
    app = body_app(SMALL)
    deep = b'{"metadata": ' + b"[" * 8 + b"]" * 8 + b"}"  # 9 levels
    r = post(app, path, content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nests deeper than 8" in r.json()["error"]["message"]
    ok = b'{"metadata": {"a": "[[[[[[[[[[\\"{{{{{{{{{{{"}}'  # brackets in strings (and an escaped quote) do not nest
    r = post(app, path, content=ok, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_the_depth_scan() -> None:
    assert not json_too_deep(b"[" * 5 + b"]" * 5, 5) and json_too_deep(b"[" * 6 + b"]" * 6, 5)
    assert json_too_deep(b"[]" * 3_000_000 + b"[[[[[[", 5), "past the first MiB scanned"
    assert not json_too_deep(b'["' + b"[" * 3_000_000 + b'"]', 5)
    assert not json_too_deep(b'[{"a": [1, {"b": "\\\\"}]}, "]]]]"]', 4) and json_too_deep(b'[{"a": [[1]]}]', 3)
    for body, deep in ((b"[" * (64 * MiB), True), (b"[]" * (32 * MiB), False)):
        assert python_lines(json_too_deep, body, 32, limit=1_000) == deep, \
            "a 64 MiB body is scanned in C-speed passes, a MiB per Python step"


class TooManyLines(Exception):
    pass


def python_lines(function: Callable[..., Any], *args: Any, limit: int) -> Any:
    """`function(*args)`, failing once it has run `limit` lines of Python in its own frame (work done in C costs
    none), so a byte-by-byte loop fails at once instead of taking minutes."""
    lines = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if frame.f_code is not function.__code__:
            return None
        lines += event == "line"
        if lines > limit:
            raise TooManyLines(f"{function.__name__} ran more than {limit} lines of Python")
        return trace

    sys.settrace(trace)
    try:
        return function(*args)
    finally:
        sys.settrace(None)


def test_multipart_parts_and_fields_are_bounded() -> None:
    app = body_app(SMALL)
    big = {"input_reference": ("a.png", b"\0" * (MiB + 1), "image/png")}
    r = post(app, "/read", data={"prompt": "x"}, files=big)
    assert r.status_code == 413 and r.json()["error"]["param"] == "input_reference", r.text
    r = post(app, "/upload", files={"file": ("a.mp4", b"\0" * (MiB + 1), "video/mp4")})
    assert r.status_code == 413 and r.json()["error"]["param"] == "file"
    r = post(app, "/read", data={"prompt": "x" * (MiB + 1)})
    assert r.status_code == 413, "a text field is a part too (a data URL is a file in disguise)"
    r = post(app, "/read", data={f"f{i}": "x" for i in range(5)})
    assert r.status_code == 400 and r.json()["error"]["code"] in ("too_many_fields", "invalid_form")
    r = post(app, "/read", data={"prompt": "x"}, files={"input_reference": ("a.png", png(), "image/png")})
    assert r.status_code == 200 and r.json() == {"fields": ["prompt"], "files": {"input_reference": len(png())}}


# --- requests' fields and cost, in-process --------------------------------------------------------------


def refused(fields: Fields, media: Media | None = None, **limits: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        route(app_config(limits=limits), fields, media or Media(), "video_test")
    return raised.value


def test_the_issue_s_168001_frames_are_refused_naming_target_fps() -> None:
    error = refused(Fields(prompt="x", fps=1, target_fps=120, extensions=20))
    assert error.param == "target_fps" and "168,001" in error.message and error.code == "too_costly"
    assert refused(Fields(prompt="x", fps=1, interpolation_factor=8, extensions=20),
                   max_output_frames=1500).param == "interpolation_factor"
    assert refused(Fields(prompt="x", extensions=20), max_output_frames=100).param == "extensions"
    assert refused(Fields(prompt="x", num_frames=81), max_output_frames=50).param == "num_frames"
    assert refused(Fields(prompt="x", num_frames=9), max_output_pixel_frames=64 * 32 * 8).param == "size"
    route(app_config(), Fields(prompt="x", fps=8, target_fps=16, extensions=2), Media(), "video_test")  # within


def test_prompts_follow_the_config() -> None:
    assert refused(Fields(prompt="x" * 11), max_prompt_chars=10).param == "prompt"
    assert refused(Fields(prompt="x", negative_prompt="n" * 11), max_prompt_chars=10).param == "negative_prompt"
    assert refused(Fields(prompt="x" * 3001), max_prompt_chars=3000).param == "prompt"
    with pytest.raises(InvalidRequest) as raised:
        route_batch(app_config(limits={"max_prompt_chars": 10}), Fields(prompt="x"), ["ok", "y" * 11], "batch_test")
    assert raised.value.param == "prompts[1]"


def test_a_source_clip_is_bounded_once_retimed_before_it_is_retimed() -> None:
    """Five frames at 1 fps are 80 at the model's 16 fps: refused before the 80 are made."""
    slow = Media(video=np.zeros((5, 32, 64, 3), np.uint8), video_fps=1.0)
    error = refused(Fields(prompt="x"), slow, max_video_frames=40)
    assert error.param == "video" and "80 once retimed" in error.message
    mask = Media(video=np.zeros((9, 32, 64, 3), np.uint8), mask=np.zeros((5, 32, 64, 3), np.uint8), mask_fps=1.0)
    assert refused(Fields(prompt="x"), mask, max_video_frames=40).param == "mask"


# --- media, in-process --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clip_4k() -> bytes:
    """A real H.264 MP4 claiming 3840x2160 and 1000 frames, about 60 KB."""
    return still_mp4(3840, 2160, 1000)


def test_videos_outside_the_bounds_are_refused_from_the_container(clip_4k: bytes,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        (clip_4k, MediaTooLarge, "3840x2160"),
        (still_mp4(64, 32, 3, fps=Fraction(1, 20)), MediaOutOfBounds, "0.05 fps"),
        (still_mp4(4, 1250, 3), MediaOutOfBounds, "shorter side"),
        (still_mp4(64, 32, 3, fps=480), MediaOutOfBounds, "480 fps"),
        (still_mp4(256, 16, 3), MediaOutOfBounds, "aspect ratio"),
        (still_mp4(64, 32, 2001), MediaTooLarge, "2001 frames"),
        (still_mp4(64, 32, 301, fps=1), MediaTooLarge, "301 s"),
    ]
    decoded: list[bytes] = []

    def counted(container: Any, stream: Any, bounds: MediaBounds) -> Iterator[Any]:
        decoded.append(data)
        yield from bounded_frames(container, stream, bounds)

    monkeypatch.setattr(video, "bounded_frames", counted)
    for data, error, says in cases:
        for read in (decode_video, normalize_video):
            with pytest.raises(error, match=says):
                read(data, BOUNDS)
            assert not decoded, f"{says}: refused from the container, before decoding a frame"


def test_a_container_that_hides_its_length_stops_at_the_cap() -> None:
    raw = media_file(frames=40, container="h264")  # an elementary stream: no frame count, no duration
    with pytest.raises(MediaTooLarge, match="more than 10 frames"):
        decode_video(raw, MediaBounds(max_frames=10))
    assert len(decode_video(raw, MediaBounds(max_frames=40))[0]) == 40


def test_a_video_s_decoded_size_is_bounded_from_the_container_and_while_decoding() -> None:
    """Within every other bound, a clip whose frames would take more memory than allowed is refused: from the
    container's count, and from the bytes decoded so far where the container hides its length."""
    one_frame = 64 * 32 * 3
    tight = MediaBounds(max_decoded_bytes=10 * one_frame)
    with pytest.raises(MediaTooLarge, match="MiB decoded"):
        decode_video(still_mp4(64, 32, 11), tight)
    assert len(decode_video(still_mp4(64, 32, 10), tight)[0]) == 10
    with pytest.raises(MediaTooLarge, match="MiB decoded"):
        decode_video(media_file(frames=40, container="h264"), MediaBounds(max_decoded_bytes=10 * 64 * 64 * 3))


def test_images_outside_the_bounds_are_refused_from_the_header() -> None:
    for data, says in ((png_header(50_000, 50_000), "pixels"), (png(4, 1250), "shorter side"),
                       (png(200, 20), "aspect ratio")):
        with pytest.raises(MediaOutOfBounds, match=says):
            decode_image(data, BOUNDS)
    assert decode_image(png(64, 16), BOUNDS).shape == (16, 64, 3)


def test_the_http_layer_passes_the_config_s_bounds_down(clip_4k: bytes) -> None:
    for param, data in (("video", clip_4k), ("mask", still_mp4(4, 1250, 3)), ("input_reference", png(4, 1250))):
        with pytest.raises(errors.APIError) as raised:
            decode_media({param: data}, BOUNDS)
        assert (raised.value.status, raised.value.param) == (422, param)
    for data in (clip_4k, png(4, 1250), still_mp4(64, 32, 3, fps=Fraction(1, 20))):
        with pytest.raises(errors.APIError) as raised:
            normalize_upload("sess_x", "upload_x", data, "f", BOUNDS)
        assert (raised.value.status, raised.value.param) == (422, "file")
    media = decode_media({"video": mp4(frames=9)}, BOUNDS)
    assert media.video is not None and media.video.shape == (9, 32, 64, 3)
    with pytest.raises(MediaError):
        decode_video(mp4(frames=9), MediaBounds(max_video_pixels=64 * 31))


# --- against the shared app -------------------------------------------------------------------------------


def test_bad_media_is_a_4xx_naming_the_field_and_the_bound(client: httpx.Client, clip_4k: bytes) -> None:
    """Refused by the bounds read from the header or container (the message names the bound broken), not by a
    decode that ran out of something."""
    session = client.post("/v1/sessions").json()["id"]
    for name, data, kind, says in (("bomb.png", png_header(50_000, 50_000), "image/png", "pixels"),
                                   ("4k.mp4", clip_4k, "video/mp4", "3840x2160"),
                                   ("slow.mp4", still_mp4(64, 32, 3, fps=Fraction(1, 20)), "video/mp4", "0.05 fps"),
                                   ("thin.mp4", still_mp4(4, 1250, 3), "video/mp4", "shorter side")):
        param = "input_reference" if kind == "image/png" else "video"
        r = client.post("/v1/videos", data={"prompt": "x"}, files={param: (name, data, kind)})
        assert r.status_code == 422 and r.json()["error"]["param"] == param, (name, r.text)
        assert says in r.json()["error"]["message"], (name, r.text)
        r = client.post(f"/v1/sessions/{session}/uploads", files={"file": (name, data, kind)})
        assert r.status_code == 422 and r.json()["error"]["param"] == "file", (name, r.text)
        assert says in r.json()["error"]["message"], (name, r.text)


def chunks(total: int) -> Iterator[bytes]:
    """A body sent chunked (no Content-Length): a multipart file part's head, then `total` bytes of it."""
    yield PART_HEAD
    for _ in range(0, total, MiB):
        yield b"a" * MiB


def test_a_chunked_body_over_the_cap_is_a_413(client: httpx.Client) -> None:
    """Through Ray Serve's proxy, which reads a whole body ahead of the replica into its own memory (so what the
    client sent is not what the app read, as it is in-process above): still a 413, whatever parses the body."""
    for path, content_type in (("/v1/videos", "application/json"), ("/v1/videos", "multipart/form-data; boundary=xyz"),
                               ("/v1/sessions", "application/json")):
        r = client.post(path, content=chunks(80 * MiB), headers={"content-type": content_type})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", (path, r.text)
        assert r.headers["connection"] == "close"
        assert r.json()["error"]["message"] == f"the request body is larger than {LimitsConfig().max_body_mb} MiB", \
            "refused by the app's own cap, not by something in between"


def test_session_metadata_is_bounded(client: httpx.Client) -> None:
    r = client.post("/v1/sessions", json={"metadata": {"note": "x" * 513}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata", r.text
    r = client.post("/v1/sessions", json={"metadata": {f"k{i}": "v" for i in range(17)}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata", r.text
    huge = b'{"metadata": {"note": "' + b"x" * (100 * 10**6) + b'"}}'
    assert client.post("/v1/sessions", content=huge, headers={"content-type": "application/json"}).status_code == 413
    assert client.post("/v1/sessions", json={"metadata": {"note": "x" * 512}}).status_code == 200


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_issue_s_costly_request_is_a_400(client: httpx.Client, dry_run: bool) -> None:
    r = client.post("/v1/videos", params={"dry_run": dry_run},
                    json={"prompt": "x", "fps": 1, "target_fps": 120, "extensions": 20})
    assert r.status_code == 400 and r.json()["error"]["param"] == "target_fps", r.text
    r = client.post("/v1/images/generations", json={"prompt": "x" * 4001})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
