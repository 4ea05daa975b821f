"""Multi-stage flows over HTTP on a real Ray Serve app with tiny twins, a real S3 server (moto, in a
subprocess on loopback) and a real webhook receiver: extend, edit with audio, interpolate, upload, notify,
batches, sessions and dry runs. Every output is checked by decoding it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from openai import OpenAI
from PIL import Image
from ray import serve

from deployments.notifier import new_secret
from serve_app.app import build_app
from tests.media import audio_info, media_file, mp4, png, probe, psnr
from tests.s3server import MotoServer
from tests.support.app import app_args
from tests.support.jobs import ENDED, ended, poll, wait_for
from tests.support.metrics import metric, scrape_until
from tests.support.webhooks import webhook_receiver

BUCKET = "wan-flows"
SECRET = new_secret()
S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def flows(cluster_url: str, moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    args = app_args(tmp_path_factory.mktemp("flows"), ["tiny-t2v", "tiny-vace", "tiny-i2v"])
    # one attempt per upload: moto on loopback does not fail, and a test stops it to see an upload fail
    args["storage"]["s3"] = {"bucket": BUCKET, "endpoint_url": moto.endpoint, "create_bucket": True, "max_attempts": 1,
                             **S3_KEYS}
    args["webhooks"] = {"secret": SECRET, "backoff_s": 0.05, "max_attempts": 3, "allow_private_networks": True}
    args["extend"] = {"overlap_frames": 5}
    serve.run(build_app(args), name="flows", route_prefix="/flows")
    with httpx.Client(base_url=f"{cluster_url}/flows", timeout=60) as client:
        yield client
    serve.delete("flows", _blocking=False)


def bucket_keys(endpoint: str, prefix: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def completed(client: httpx.Client, video_id: str) -> dict[str, Any]:
    video = wait_for(client, video_id, ENDED, timeout_s=240)
    assert video["status"] == "completed", video
    return video


def content(client: httpx.Client, video_id: str, variant: str) -> bytes:
    r = client.get(f"/v1/videos/{video_id}/content", params={"variant": variant})
    assert r.status_code == 200, r.text
    return r.content


def test_extend_twice_seams_fall_where_the_plan_says(flows: httpx.Client, moto: MotoServer) -> None:
    session = flows.post("/v1/sessions", json={"metadata": {"user": "u1"}}).json()
    body = {"prompt": "a train crossing a bridge", "num_frames": 17, "extensions": 2, "seed": 3,
            "session_id": session["id"]}
    video = completed(flows, flows.post("/v1/videos", json=body).json()["id"])
    assert video["num_frames"] == 17 + 12 * 2 == 41 and video["seconds"] == "2.5"
    stages = video["plan"]["stages"]
    assert [s["kind"] for s in stages] == ["generate", "extend", "encode", "upload"]
    assert stages[1]["params"] == {"model": "tiny-vace", "method": "vace", "window": 17, "overlap": 5,
                                   "extensions": 2}
    assert video["total_steps"] == video["step"] == 4 * 3, "progress counts the steps of all three windows"

    combined, fps, _ = probe(content(flows, video["id"], "video"))
    assert combined.shape == (41, 32, 64, 3) and fps == 16
    seams = {o["name"]: (o["start"], o["stop"]) for o in stages[2]["params"]["outputs"]}
    assert seams == {"initial": (0, 17), "extension_001": (17, 29), "extension_002": (29, 41), "combined": (0, 41)}
    for name in ("initial", "extension_001", "extension_002"):
        start, stop = seams[name]
        part, _, _ = probe(content(flows, video["id"], name))
        assert len(part) == stop - start
        assert psnr(part, combined[start:stop]) > 30, f"{name} is where the plan puts it"
        shifts = [d for d in (-2, -1, 0, 1, 2) if start + d >= 0 and stop + d <= len(combined)]
        best = max(shifts, key=lambda d: psnr(part, combined[start + d : stop + d]))
        assert best == 0, f"{name} matches the combined video best {best} frames off the planned seam"

    assets = {a["name"]: a for a in video["assets"]}
    assert set(assets) == {"initial", "initial_thumbnail", "extension_001", "extension_001_thumbnail",
                           "extension_002", "extension_002_thumbnail", "combined", "thumbnail"}
    combined_asset = assets["combined"]
    assert (combined_asset["type"], combined_asset["format"], combined_asset["frames"], combined_asset["fps"],
            combined_asset["width"], combined_asset["height"]) == ("video", "mp4", 41, 16, 64, 32)
    assert combined_asset["duration"] == pytest.approx(41 / 16)
    # uploaded under the session's layout, and the job's URLs fetch them from the bucket
    prefix = f"sessions/{session['id']}/generations/{video['id']}/"
    assert video["upload"] == {"status": "completed", "error": None}
    assert bucket_keys(moto.endpoint, prefix) == {
        prefix + n for n in ("initial.mp4", "extension_001.mp4", "extension_002.mp4", "combined.mp4",
                             "thumbnail.webp", "initial_thumbnail.webp", "extension_001_thumbnail.webp",
                             "extension_002_thumbnail.webp")}
    assert combined_asset["url"].startswith(f"{moto.endpoint}/{BUCKET}/{prefix}combined.mp4?")
    fetched = httpx.get(combined_asset["url"])
    assert fetched.status_code == 200 and fetched.content == content(flows, video["id"], "combined")
    assert len(fetched.content) == combined_asset["file_size_bytes"]
    assert Image.open(io.BytesIO(httpx.get(combined_asset["thumbnail_url"]).content)).format == "WEBP"

    listed = flows.get(f"/v1/sessions/{session['id']}").json()
    assert listed["metadata"] == {"user": "u1"}
    assert [v["id"] for v in listed["videos"]] == [video["id"]] and len(listed["videos"][0]["assets"]) == 8


def test_image_to_video_extends_by_i2v_from_the_last_frame(flows: httpx.Client) -> None:
    r = flows.post("/v1/videos", data={"prompt": "the cat walks on", "num_frames": "9", "extensions": "1",
                                       "overlap_frames": "1"},
                   files={"input_reference": ("cat.png", png(), "image/png")})
    assert r.status_code == 200, r.text
    video = completed(flows, r.json()["id"])
    assert video["plan"]["stages"][1]["params"]["method"] == "i2v" and video["model"] == "tiny-i2v"
    frames, _, _ = probe(content(flows, video["id"], "video"))
    assert len(frames) == 9 + 8 == video["num_frames"]


def test_edit_an_uploaded_clip_keeps_its_audio_and_duration(flows: httpx.Client, moto: MotoServer) -> None:
    session = flows.post("/v1/sessions").json()
    # a 2 s MOV at 20 fps with 2.5 s of sound: converted to MP4 on upload, retimed to 16 fps for Wan
    source = media_file(frames=40, fps=20, audio_s=2.5, container="mov")
    up = flows.post(f"/v1/sessions/{session['id']}/uploads", files={"file": ("clip.mov", source, "video/quicktime")})
    assert up.status_code == 200, up.text
    upload = up.json()
    assert upload["kind"] == "video" and upload["info"]["frames"] == 40 and upload["info"]["has_audio"]
    ref = flows.post(f"/v1/sessions/{session['id']}/uploads", files={"file": ("ref.webp", png(), "image/webp")})
    assert ref.json()["kind"] == "image" and ref.json()["content_type"] == "image/jpeg"
    mask = "data:video/mp4;base64," + base64.b64encode(mp4(frames=40, fps=20, value=255)).decode()
    r = flows.post("/v1/videos", json={
        "prompt": "make it snow", "session_id": session["id"], "video": upload["id"], "mask": mask,
        "reference_image": ref.json()["id"], "num_frames": 17, "seed": 1})
    assert r.status_code == 200, r.text
    video = completed(flows, r.json()["id"])
    assert video["model"] == "tiny-vace" and video["task"] == "vace"
    # 2 s at 16 fps is 32 frames: a 17-frame window and two 12-frame extensions (41), trimmed to 32
    assert video["plan"]["stages"][1]["params"]["extensions"] == 2
    data = content(flows, video["id"], "video")
    frames, fps, _ = probe(data)
    assert frames.shape == (32, 32, 64, 3) and fps == 16
    codec, seconds, _ = audio_info(data)
    assert codec == "aac" and seconds == pytest.approx(32 / 16, abs=1024 / 48000 + 1e-3)
    uploads = bucket_keys(moto.endpoint, f"sessions/{session['id']}/")
    assert f"sessions/{session['id']}/generations/{video['id']}/combined.mp4" in uploads
    listed = flows.get(f"/v1/sessions/{session['id']}").json()
    assert [u["id"] for u in listed["uploads"]] == [upload["id"], ref.json()["id"]]


def test_interpolation_doubles_the_frame_rate(flows: httpx.Client) -> None:
    video = completed(flows, flows.post("/v1/videos", json={"prompt": "a pendulum", "num_frames": 9,
                                                            "target_fps": 32}).json()["id"])
    assert [s["kind"] for s in video["plan"]["stages"]] == ["generate", "interpolate", "encode", "upload"]
    frames, fps, _ = probe(content(flows, video["id"], "video"))
    assert len(frames) == 2 * 9 - 1 == video["num_frames"] and fps == 32 == video["fps"]


def test_webhook_gets_a_signed_event_with_the_assets(flows: httpx.Client) -> None:
    with webhook_receiver() as receiver:
        receiver.script(503)
        video = flows.post("/v1/videos", json={"prompt": "a bell", "num_frames": 5,
                                               "webhook_url": receiver.url}).json()
        assert video["plan"]["stages"][-1] == {"kind": "notify", "params": {"url": receiver.url}}
        first = receiver.next(timeout_s=120)  # answered 503: retried
        headers, body = (got := receiver.next(timeout_s=30)).headers, got.body
    assert headers["webhook-id"] == first.headers["webhook-id"], "a retry is the same delivery"
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    OpenAI(api_key="unused", webhook_secret=SECRET).webhooks.verify_signature(body, headers)  # raises if not
    event = json.loads(body)
    assert event["type"] == "video.completed" and event["data"]["id"] == video["id"]
    assert {a["name"] for a in event["data"]["assets"]} == {"video", "thumbnail"}
    assert event["data"]["assets"][0]["url"].startswith("http")
    delivered = poll(flows, f"/v1/videos/{video['id']}", lambda v: v["webhook"] is not None, timeout_s=240)
    assert delivered["webhook"]["delivered"] and delivered["webhook"]["attempts"] == 2


def test_batch_images_by_index_and_as_a_zip(flows: httpx.Client) -> None:
    prompts = ["a red apple", "a green pear", "a yellow lemon"]
    r = flows.post("/v1/images/batches", json={"prompts": prompts, "size": "32x64", "seed": 10})
    assert r.status_code == 200, r.text
    batch = ended(flows, f"/v1/images/batches/{r.json()['id']}", timeout_s=240)
    assert batch["status"] == "completed" and batch["progress"] == 100
    images = [flows.get(f"/v1/images/batches/{batch['id']}/images/{i}") for i in range(3)]
    assert all(r.headers["content-type"] == "image/png" for r in images)
    decoded = [Image.open(io.BytesIO(r.content)) for r in images]
    assert [i.size for i in decoded] == [(32, 64)] * 3
    assert not np.array_equal(np.asarray(decoded[0]), np.asarray(decoded[1]))
    archive = zipfile.ZipFile(io.BytesIO(flows.get(f"/v1/images/batches/{batch['id']}/content").content))
    assert archive.namelist() == ["image_000.png", "image_001.png", "image_002.png"]
    assert [archive.read(n) for n in archive.namelist()] == [r.content for r in images]
    assert flows.get(f"/v1/images/batches/{batch['id']}/images/3").status_code == 404
    too_many = flows.post("/v1/images/batches", json={"prompts": ["x"] * 21})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "prompts"


def test_dry_run_plans_an_extension_without_creating_work(flows: httpx.Client) -> None:
    before = flows.get("/v1/videos", params={"limit": 1}).json()["last_id"]
    r = flows.post("/v1/videos", params={"dry_run": "true"},
                   json={"prompt": "long", "num_frames": 17, "extensions": 3, "target_fps": 32})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert [s["kind"] for s in plan["plan"]["stages"]] == [
        "generate", "extend", "encode", "interpolate", "encode", "upload"]
    assert plan["num_frames"] == 2 * (17 + 12 * 3) - 1 and plan["fps"] == 32
    assert flows.get("/v1/videos", params={"limit": 1}).json()["last_id"] == before


@pytest.mark.parametrize(
    ("body", "model", "task"),
    [
        ({"reference_mode": "end"}, "tiny-vace", "vace"),  # one image as the last frame: VACE keyframes
        ({"reference_mode": "both", "with_last": True}, "tiny-vace", "vace"),  # no FLF2V model served here
        ({"reference_mode": "start"}, "tiny-i2v", "i2v"),
        ({"reference_mode": "start", "model": "tiny-vace"}, "tiny-vace", "vace"),
    ],
)
def test_reference_frame_modes(flows: httpx.Client, body: dict, model: str, task: str) -> None:
    files = {"input_reference": ("a.png", png(seed=1), "image/png")}
    if body.pop("with_last", False):
        files["last_image"] = ("b.png", png(seed=2), "image/png")
    r = flows.post("/v1/videos", params={"dry_run": "true"}, data={"prompt": "keys", "num_frames": "9", **body},
                   files=files)
    assert r.status_code == 200, r.text
    assert (r.json()["model"], r.json()["task"]) == (model, task)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"reference_mode": "none"}, "reference_mode"),
        ({"reference_mode": "both"}, "reference_mode"),
        ({"denoise_strength": 0.5, "reference_strength": 0.2}, "reference_strength"),
        ({"extensions": 1, "overlap_frames": 9}, "overlap_frames"),
        ({"extensions": 99}, "extensions"),
        ({"target_fps": 8}, "target_fps"),
        ({"target_fps": 32, "interpolation_factor": 2}, "interpolation_factor"),
        ({"webhook_url": "not a url"}, "webhook_url"),
        ({"session_id": "sess_nope"}, "session_id"),
        ({"video": "upload_nope"}, "session_id"),
    ],
)
def test_flow_fields_are_checked(flows: httpx.Client, body: dict, param: str) -> None:
    r = flows.post("/v1/videos", data={"prompt": "x", "num_frames": "9", **{k: str(v) for k, v in body.items()}},
                   files={"input_reference": ("a.png", png(), "image/png")})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_cancel_stops_a_job_in_its_extend_stage(flows: httpx.Client) -> None:
    video = flows.post("/v1/videos", json={"prompt": "endless", "num_frames": 81, "extensions": 5,
                                           "overlap_frames": 15, "num_inference_steps": 40}).json()
    v = poll(flows, f"/v1/videos/{video['id']}", lambda v: v["stage"] == "extend" or v["status"] in ENDED,
             timeout_s=240)
    assert v["status"] not in ENDED, v
    assert flows.post(f"/v1/videos/{video['id']}/cancel").status_code == 200
    v = wait_for(flows, video["id"], ENDED)
    assert v["status"] == "cancelled" and v["step"] < v["total_steps"] == 40 * 6


def test_a_failed_upload_keeps_the_video_and_can_be_retried(flows: httpx.Client, moto: MotoServer,
                                                            cluster_url: str) -> None:
    """S3 goes away for one job and comes back empty: the module's last test, since the others' objects go too."""
    moto.stop()
    video = completed(flows, flows.post("/v1/videos", json={"prompt": "kept", "num_frames": 5}).json()["id"])
    assert video["upload"]["status"] == "failed" and BUCKET in video["upload"]["error"]
    scrape_until(lambda s: metric(s, "ray_wan_upload_failures_total", application="flows") is not None,
                 "the upload failure")
    frames, _, _ = probe(content(flows, video["id"], "video"))
    assert len(frames) == 5, "the local copy serves the video"
    assert video["assets"][0]["url"].startswith(f"{cluster_url}/flows/v1/videos/")
    moto.start()
    boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    retried = flows.post(f"/v1/videos/{video['id']}/upload").json()
    assert retried["upload"] == {"status": "completed", "error": None}
    assert bucket_keys(moto.endpoint, f"generations/{video['id']}/") == {
        f"generations/{video['id']}/video.mp4", f"generations/{video['id']}/thumbnail.webp"}
    assert httpx.get(retried["assets"][0]["url"]).content == content(flows, video["id"], "video")
