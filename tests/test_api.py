"""The HTTP API on a real Ray Serve app with every tiny twin: each task end to end, progress, cancellation, errors
and reproducibility (the openai SDK's own calls are tests/test_openai_sdk.py's)."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from deployments.generator import REPORT_INTERVAL_S
from tests.media import mp4, png, png_header, probe
from tests.support.app import APP
from tests.support.jobs import ENDED, poll, until, wait_for
from tests.support.metrics import metric, scrape, scrape_until

CONTENT_ROUTE = "/v1/videos/{video_id}/content"  # Serve labels an ingress's requests with the route they matched


def create(client: httpx.Client, **kwargs) -> dict:
    r = client.post("/v1/videos", **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["openai-poll-after-ms"]
    return r.json()


def finished_mp4(client: httpx.Client, video: dict) -> tuple[dict, np.ndarray, float]:
    video = wait_for(client, video["id"], ENDED)
    assert video["status"] == "completed", video
    assert video["progress"] == 100
    r = client.get(f"/v1/videos/{video['id']}/content")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    frames, fps, codec = probe(r.content)
    assert codec == "h264"
    return video, frames, fps


def tracker_job(video_id: str):
    return serve.get_deployment_handle("JobTracker", APP).get.remote(video_id).result()


@pytest.mark.parametrize(
    ("body", "model", "frames", "fps"),
    [
        ({"prompt": "a lighthouse at dusk", "num_frames": 9, "seed": 1}, "tiny-t2v", 9, 16),
        ({"prompt": "waves", "model": "tiny-a14b", "seconds": 1, "guidance_scale_2": 2.0}, "tiny-a14b", 17, 16),
        ({"prompt": "a kite", "model": "tiny-ti2v", "num_frames": 13, "size": "32x64"}, "tiny-ti2v", 13, 24),
        ({"prompt": "slow", "num_frames": 5, "fps": 8}, "tiny-t2v", 5, 8),
    ],
)
def test_text_to_video(client: httpx.Client, body: dict, model: str, frames: int, fps: int) -> None:
    video, decoded, rate = finished_mp4(client, create(client, json=body))
    width, height = map(int, video["size"].split("x"))
    assert video["model"] == model and video["task"] == "t2v"
    assert decoded.shape == (frames, height, width, 3)
    assert rate == fps
    thumb = client.get(f"/v1/videos/{video['id']}/content", params={"variant": "thumbnail"})
    assert thumb.headers["content-type"] == "image/webp"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 256


def test_content_serves_byte_ranges_for_players(client: httpx.Client) -> None:
    video = wait_for(client, create(client, json={"prompt": "seek", "num_frames": 9})["id"], ENDED)
    url = f"/v1/videos/{video['id']}/content"
    whole = client.get(url)
    size = len(whole.content)
    assert whole.headers["accept-ranges"] == "bytes" and int(whole.headers["content-length"]) == size
    assert video["assets"][0]["file_size_bytes"] == size

    middle = client.get(url, headers={"Range": "bytes=100-1099"})
    assert middle.status_code == 206 and middle.headers["content-range"] == f"bytes 100-1099/{size}"
    assert middle.content == whole.content[100:1100]
    tail = client.get(url, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == whole.content[-50:]
    open_ended = client.get(url, headers={"Range": f"bytes={size - 10}-"})
    assert open_ended.content == whole.content[-10:]

    outside = client.get(url, headers={"Range": f"bytes={size}-"})
    assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{size}"
    assert outside.json()["error"]["code"] == "invalid_range"


def test_content_gone_from_storage_is_a_404(client: httpx.Client, serve_root: Path) -> None:
    video = wait_for(client, create(client, json={"prompt": "lost", "num_frames": 5})["id"], ENDED)
    (serve_root / "outputs" / tracker_job(video["id"]).assets[0]["key"]).unlink()
    r = client.get(f"/v1/videos/{video['id']}/content")
    assert r.status_code == 404 and r.json()["error"]["param"] == "variant"


def test_image_to_video_multipart_routes_to_i2v(client: httpx.Client) -> None:
    video = create(client, data={"prompt": "the cat turns", "num_frames": "9", "seconds": "0.5"},
                   files={"input_reference": ("cat.png", png(), "image/png")})
    video, decoded, fps = finished_mp4(client, video)
    assert (video["model"], video["task"]) == ("tiny-i2v", "i2v")
    assert decoded.shape == (9, 32, 64, 3) and fps == 16


def test_first_last_frame_to_video(client: httpx.Client) -> None:
    video = create(client, data={"prompt": "day to night", "num_frames": "9"},
                   files={"input_reference": ("a.png", png(seed=1), "image/png"),
                          "last_image": ("b.png", png(seed=2), "image/png")})
    video, decoded, _ = finished_mp4(client, video)
    assert (video["model"], video["task"]) == ("tiny-flf2v", "flf2v")
    assert len(decoded) == 9


def test_image_to_video_with_a_data_url_and_ti2v(client: httpx.Client) -> None:
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    video = create(client, json={"prompt": "go", "model": "tiny-ti2v", "num_frames": 9,
                                 "input_reference": {"image_url": url}})
    video, decoded, fps = finished_mp4(client, video)
    assert video["task"] == "i2v" and fps == 24 and len(decoded) == 9


def test_vace_edit_with_video_and_mask(client: httpx.Client) -> None:
    video = create(client, data={"prompt": "replace the sky"},
                   files={"video": ("src.mp4", mp4(frames=9), "video/mp4"),
                          "mask": ("mask.mp4", mp4(frames=9, value=255), "video/mp4")})
    video, decoded, _ = finished_mp4(client, video)
    assert (video["model"], video["task"]) == ("tiny-vace", "vace")
    assert decoded.shape == (9, 32, 64, 3)


def test_video_to_video_on_a_t2v_model(client: httpx.Client) -> None:
    video = create(client, data={"prompt": "as a watercolour", "denoise_strength": "0.5"},
                   files={"video": ("src.mp4", mp4(frames=13), "video/mp4")})
    video, decoded, _ = finished_mp4(client, video)
    assert (video["model"], video["task"]) == ("tiny-t2v", "v2v")
    assert len(decoded) == 13


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
def test_text_to_image(client: httpx.Client, response_format: str) -> None:
    r = client.post("/v1/images/generations",
                    json={"prompt": "a red apple", "n": 2, "size": "32x64", "response_format": response_format})
    assert r.status_code == 200, r.text
    images = []
    for item in r.json()["data"]:
        data = base64.b64decode(item["b64_json"]) if response_format == "b64_json" else httpx.get(item["url"]).content
        images.append(Image.open(io.BytesIO(data)))
    assert [(i.format, i.size) for i in images] == [("PNG", (32, 64))] * 2
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1])), "n images use consecutive seeds"


def test_image_url_form_key(client: httpx.Client) -> None:
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    video = create(client, data={"prompt": "pan right", "num_frames": "5", "input_reference[image_url]": url})
    assert video["model"] == "tiny-i2v"


def test_dry_run_returns_the_plan_without_queueing(client: httpx.Client) -> None:
    before = client.get("/v1/videos", params={"limit": 1}).json()["last_id"]
    r = client.post("/v1/videos", params={"dry_run": "true"}, data={"prompt": "a dry run", "seconds": "5"},
                    files={"input_reference": ("a.png", png(), "image/png")})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert (plan["object"], plan["model"], plan["task"], plan["num_frames"]) == ("video.plan", "tiny-i2v", "i2v", 81)
    assert [s["kind"] for s in plan["plan"]["stages"]] == ["generate", "encode", "upload"]
    assert plan["plan"]["stages"][0]["params"]["model"] == "tiny-i2v"
    assert client.get("/v1/videos", params={"limit": 1}).json()["last_id"] == before
    portrait = client.post("/v1/videos", params={"dry_run": "true"}, data={"prompt": "tall", "num_frames": "5"},
                           files={"input_reference": ("p.png", png(width=32, height=64), "image/png")}).json()
    assert (portrait["size"], portrait["resize_policy"]) == ("32x64", "center_crop"), "the image's aspect ratio"


def test_list_pages_with_after(client: httpx.Client) -> None:
    ids = [create(client, json={"prompt": f"p{i}", "num_frames": 1, "task": "t2i"})["id"] for i in range(3)]
    first = client.get("/v1/videos", params={"limit": 2, "order": "desc"}).json()
    assert [v["id"] for v in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = client.get("/v1/videos", params={"limit": 2, "order": "desc", "after": first["last_id"]}).json()
    assert second["data"][0]["id"] == ids[0]


def test_progress_rises_step_by_step(client: httpx.Client) -> None:
    steps = 60
    # Steps long enough that several coalesced step reports (one per REPORT_INTERVAL_S) land between polls' ends.
    video = create(client, json={"prompt": "a long one", "size": "160x96", "num_frames": 81,
                                 "num_inference_steps": steps})
    seen: list[tuple[int, int]] = []

    def ended_else_seen(v: dict) -> bool:
        if v["status"] in ENDED:
            return True
        assert v["total_steps"] == steps
        seen.append((v["step"], v["progress"]))
        return False

    v = poll(client, f"/v1/videos/{video['id']}", ended_else_seen, timeout_s=240, what=f"{video['id']} to end")
    assert (v["status"], v["progress"], v["step"]) == ("completed", 100, steps)
    assert seen == sorted(seen), "step and progress never go back"
    running = [(step, progress) for step, progress in seen if 0 < step < steps]
    assert all(progress == 100 * step // steps for step, progress in running), "progress is the share of steps"
    assert len({step for step, _ in running}) >= 3, f"progress must move step by step during the run, saw {seen}"


def test_cancel_stops_a_running_job_within_a_step(client: httpx.Client) -> None:
    """The tracker records the step a generator stopped at. Diffusers decodes only after the last step, so a job
    whose recorded steps stop at the cancel (+1 in flight) never ran its VAE decode; a generator that ignored the
    stop would run all 200 steps and decode, and `step` would say 200. Reports are not awaited and are coalesced
    (one per REPORT_INTERVAL_S), so the step recorded when the cancel arrives may lag the generator's by a report's
    trip and by the steps of one interval: at this size a step takes longer than the interval on 2 cores, and the
    slack covers a faster machine."""
    video = create(client, json={"prompt": "never finished", "size": "320x192", "num_frames": 81,
                                 "num_inference_steps": 200})
    v = poll(client, f"/v1/videos/{video['id']}", lambda v: v["step"] >= 3 or v["status"] in ENDED,
             what=f"3 steps of {video['id']}")
    assert v["status"] not in ENDED, v
    r = client.post(f"/v1/videos/{video['id']}/cancel")
    assert r.status_code == 200, r.text
    cancel_step = r.json()["step"]
    v = wait_for(client, video["id"], ENDED)
    assert v["status"] == "cancelled" and v["error"]["code"] == "cancelled" and v["assets"] == []
    job = tracker_job(video["id"])
    unreported = math.ceil(REPORT_INTERVAL_S / ((job.completed_at - job.started_at) / v["step"]))
    assert 3 <= cancel_step <= v["step"] <= cancel_step + 2 + unreported < 200, (cancel_step, v["step"], unreported)
    assert client.get(f"/v1/videos/{video['id']}/content").status_code == 409
    again = client.post(f"/v1/videos/{video['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled", "cancelling twice is harmless"
    # the generator is free again at once: the next job completes
    finished_mp4(client, create(client, json={"prompt": "next", "num_frames": 5}))


def test_delete_of_a_running_video_stops_it_and_removes_it(client: httpx.Client, serve_root: Path) -> None:
    video = create(client, json={"prompt": "deleted midway", "num_frames": 81, "num_inference_steps": 200})
    wait_for(client, video["id"], {"in_progress"})
    r = client.delete(f"/v1/videos/{video['id']}")
    assert r.status_code == 200 and r.json() == {"id": video["id"], "object": "video.deleted", "deleted": True}
    assert client.get(f"/v1/videos/{video['id']}").status_code == 404, "deleted means gone, as the SDK reads it"
    assert video["id"] not in [v["id"] for v in client.get("/v1/videos", params={"limit": 100}).json()["data"]]
    tracker = serve.get_deployment_handle("JobTracker", APP)
    # its owner removes the record once it stopped
    until(lambda: tracker.get.remote(video["id"]).result() is None, 60, "the deleted job's record to be removed")
    assert client.delete(f"/v1/videos/{video['id']}").status_code == 404


def test_delete_of_a_finished_video_removes_its_files(client: httpx.Client, serve_root: Path) -> None:
    video = wait_for(client, create(client, json={"prompt": "short-lived", "num_frames": 5})["id"], ENDED)
    keys = [a["key"] for a in tracker_job(video["id"]).assets]
    assert keys and all((serve_root / "outputs" / k).is_file() for k in keys)
    assert client.delete(f"/v1/videos/{video['id']}").json()["deleted"]
    assert not any((serve_root / "outputs" / k).exists() for k in keys)
    assert client.get(f"/v1/videos/{video['id']}").status_code == 404
    assert client.post(f"/v1/videos/{video['id']}/cancel").status_code == 404


def test_same_seed_same_video(client: httpx.Client) -> None:
    body = {"prompt": "a windmill", "num_frames": 9, "seed": 1234}
    a = finished_mp4(client, create(client, json=body))[1]
    b = finished_mp4(client, create(client, json=body))[1]
    c = finished_mp4(client, create(client, json={**body, "seed": 1235}))[1]
    assert np.array_equal(a, b), "the same seed gives the same decoded frames"
    assert not np.array_equal(a, c)


def test_an_omitted_seed_is_drawn_and_reported(client: httpx.Client) -> None:
    body = {"prompt": "a lantern", "num_frames": 5}
    first, second = (finished_mp4(client, create(client, json=body)) for _ in range(2))
    seeds = [first[0]["seed"], second[0]["seed"]]
    assert seeds[0] != seeds[1] and all(0 <= s < 2**31 for s in seeds), seeds
    replay = finished_mp4(client, create(client, json={**body, "seed": seeds[0]}))
    assert np.array_equal(replay[1], first[1]), "the reported seed reproduces the video"


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        # the router's checks are tests/test_router.py's, in-process; two prove their mapping onto HTTP, as JSON and
        # as a form
        ({"json": {"prompt": "x", "model": "sora-2"}}, 400, "model"),
        ({"data": {"prompt": "x", "model": "tiny-t2v"}, "files": {"input_reference": ("a.png", png(), "image/png")}},
         400, "model"),
        ({"data": {"prompt": "x"}, "files": {"input_reference": ("a.png", b"GIF? no, text", "image/png")}},
         422, "input_reference"),
        ({"json": {"prompt": "x", "input_reference": "http://example.com/a.png"}}, 400, "input_reference"),
        ({"json": {"model": "tiny-t2v"}}, 400, "prompt"),
        ({"data": {"prompt": ""}}, 400, "prompt"),
        ({"json": {"prompt": "x", "num_inference_steps": "many"}}, 400, "num_inference_steps"),
        ({"json": {"prompt": "x", "colour": "red"}}, 400, "colour"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, None),
        ({"content": b"[" * 200_000, "headers": {"content-type": "application/json"}}, 400, None),
        ({"data": {"prompt": "x"}, "files": {"input_reference": ("bomb.png", png_header(50_000, 50_000), "image/png")}},
         422, "input_reference"),
        ({"content": b"prompt=x", "headers": {"content-type": "text/plain"}}, 400, None),
    ],
)
def test_bad_input_gets_a_clear_4xx(client: httpx.Client, kwargs: dict, status: int, param: str | None) -> None:
    r = client.post("/v1/videos", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_unknown_ids_and_bad_queries(client: httpx.Client) -> None:
    r = client.get("/v1/videos/video_nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.delete("/v1/videos/video_nope").status_code == 404
    assert client.get("/v1/videos", params={"limit": 0}).json()["error"]["param"] == "limit"
    r = client.post("/v1/images/generations", json={"prompt": "x", "model": "tiny-i2v"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_too_large_upload_is_413(client: httpx.Client) -> None:
    r = client.post("/v1/videos", data={"prompt": "x"},
                    files={"input_reference": ("big.png", b"\0" * (65 * 2**20), "image/png")})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_models_and_health(client: httpx.Client) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert set(models) == {"tiny-t2v", "tiny-i2v", "tiny-flf2v", "tiny-vace", "tiny-ti2v", "tiny-a14b", "tiny-animate"}
    assert models["tiny-flf2v"]["tasks"] == ["flf2v"]
    assert models["tiny-ti2v"]["fps"] == 24
    assert models["tiny-t2v"]["replicas"]["states"].get("RUNNING") == 1
    assert client.get("/health").json() == {"status": "ok"}


def test_queue_depth_and_position(client: httpx.Client) -> None:
    body = {"prompt": "slow", "model": "tiny-a14b", "num_frames": 81, "num_inference_steps": 200}
    running = create(client, json=body)
    waiting = create(client, json=body)
    wait_for(client, running["id"], {"in_progress"})
    assert client.get(f"/v1/videos/{waiting['id']}").json()["queue_position"] == 1
    entry = next(q for q in client.get("/v1/queue").json()["data"] if q["model"] == "tiny-a14b")
    assert (entry["queued"], entry["in_progress"], entry["max_queued_jobs"]) == (1, 1, 64)
    assert entry["replicas"] == {"RUNNING": 1}
    for video in (waiting, running):
        client.post(f"/v1/videos/{video['id']}/cancel")
    cancelled = wait_for(client, waiting["id"], ENDED)
    assert (cancelled["status"], cancelled["step"], cancelled["progress"]) == ("cancelled", 0, 0), "no step ran"
    assert tracker_job(waiting["id"]).started_at is None
    assert client.get(f"/v1/videos/{running['id']}").json()["queue_position"] is None


def test_custom_metrics_on_the_prometheus_endpoint(client: httpx.Client) -> None:
    """What one job changes: created and finished counters, a generation and its steps, and the gauge of running
    jobs back at 0 (the next test sees it at 1). Counts are read before and after, so earlier tests cannot make it
    pass, and only the shared app's series count: the apps of other tests export the same names."""
    tags = {"model": "tiny-t2v", "application": APP}
    before = scrape()

    def count(samples: dict, name: str, **labels: str) -> float:
        return metric(samples, name, **tags, **labels) or 0.0

    steps = 12
    video = create(client, json={"prompt": "measured", "num_frames": 9, "num_inference_steps": steps})
    finished_mp4(client, video)
    want = {
        ("ray_wan_jobs_created_total", "kind", "video"): 1,
        ("ray_wan_jobs_finished_total", "status", "completed"): 1,
        ("ray_wan_generation_seconds_count", "task", "t2v"): 1,
        ("ray_wan_denoising_step_seconds_count", None, None): steps,
    }

    def changed(s: dict) -> dict:
        return {key: count(s, key[0], **({key[1]: key[2]} if key[1] else {})) -
                count(before, key[0], **({key[1]: key[2]} if key[1] else {})) for key in want}

    def downloads(s: dict) -> float:  # Serve's own counter, on the same endpoint: requests its ingress served
        return metric(s, "ray_serve_deployment_request_counter_total", application=APP, deployment="Gateway",
                      route=CONTENT_ROUTE) or 0.0

    after = scrape_until(lambda s: changed(s) == want and count(s, "ray_wan_jobs", status="in_progress") == 0
                         and downloads(s) > downloads(before), "this job's metrics and Serve's count of its download")
    assert changed(after) == want
    routes = {labels.get("route") for labels, _ in after.get("ray_serve_deployment_request_counter_total", [])}
    assert downloads(after) - downloads(before) == 1, f"finished_mp4 downloads once; routes counted: {routes}"


def test_the_gauge_of_running_jobs_shows_a_running_job_until_it_ends(client: httpx.Client) -> None:
    """Ray reports each second and a scrape may take longer: the job runs (minutes of steps) until the gauge has
    been seen, then is cancelled."""
    tags = {"model": "tiny-t2v", "application": APP}
    video = create(client, json={"prompt": "gauged", "size": "320x192", "num_frames": 81, "num_inference_steps": 200})
    scrape_until(lambda s: metric(s, "ray_wan_jobs", status="in_progress", **tags) == 1, "the gauge of a running job")
    assert client.post(f"/v1/videos/{video['id']}/cancel").status_code == 200
    scrape_until(lambda s: metric(s, "ray_wan_jobs", status="in_progress", **tags) == 0, "the gauge back at 0")
