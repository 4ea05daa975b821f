"""One tiny video job, run two ways: directly through `pipelines/` in this process, and through the HTTP API of a
real Ray Serve app started here. Shared by `serving_overhead.py` and `concurrency.py`, so both time the same work.

The direct path does what the service does for a video job (generate, then the MP4 and its thumbnail) with one
torch thread, which is what a generator replica gets: Ray sets OMP_NUM_THREADS=1 for an actor with a fractional
`num_cpus`. The HTTP path is what a client does: POST /v1/videos, follow GET /v1/videos/{id}/events until the
job's final event (pushed, so no polling grain is timed), then GET its content.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ray
from httpx_sse import connect_sse
from ray import serve

from pipelines.generate import generate
from pipelines.loading import load_model
from pipelines.request import GenerationRequest
from pipelines.variants import Task, get_variant
from pipelines.video import encode_mp4, thumbnail_webp
from serve_app.app import build_app
from wan_client.client import dispatched

MODEL = "tiny-t2v"
WIDTH, HEIGHT = 64, 32
SEED = 1234
PROMPT = "a red fox running through fresh snow"


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def direct_job(steps: int, frames: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Callable[[], bytes]:
    """The job in this process: its MP4's bytes. Loads tiny-t2v once, here."""
    variant = get_variant(MODEL)
    model = load_model(variant)
    request = GenerationRequest(
        task=Task.T2V, prompt=PROMPT, width=size[0], height=size[1], num_frames=frames,
        num_inference_steps=steps, guidance_scale=variant.guidance_scale,
        guidance_scale_2=variant.guidance_scale_2, flow_shift=variant.flow_shift, seed=SEED,
        negative_prompt=variant.negative_prompt,  # what the service sends when a request has none
    )

    def run() -> bytes:
        clip = generate(model, request)
        thumbnail_webp(clip)
        return encode_mp4(clip, variant.fps)

    return run


def http_job(
    client: httpx.Client, steps: int, frames: int, size: tuple[int, int] = (WIDTH, HEIGHT)
) -> Callable[[], bytes]:
    """The same job through the API: its MP4's bytes, once its final event says completed."""
    body = {"prompt": PROMPT, "model": MODEL, "size": f"{size[0]}x{size[1]}", "num_frames": frames,
            "num_inference_steps": steps, "seed": SEED}

    def run() -> bytes:
        created = client.post("/v1/videos", json=body)
        created.raise_for_status()
        video_id = created.json()["id"]
        with connect_sse(client, "GET", f"/v1/videos/{video_id}/events") as events:
            events.response.raise_for_status()
            final = next(e for e in dispatched(events) if not e.event.endswith(".progress"))
        if final.event != "video.completed":
            raise RuntimeError(f"{video_id} ended {final.event}: {json.loads(final.data).get('error')}")
        content = client.get(f"/v1/videos/{video_id}/content")
        content.raise_for_status()
        return content.content

    return run


def app_args(root: Path, replicas: int = 1) -> dict[str, Any]:
    return {
        "job_db": str(root / "jobs.db"),
        "storage": {"root": str(root / "outputs")},
        "models": [{"name": MODEL, "num_replicas": replicas, "ray_actor_options": {"num_cpus": 0.1}}],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving() -> Iterator[httpx.Client]:
    """Ray and Serve started in this process, and a client of Serve's HTTP proxy; everything down afterwards."""
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            yield client
    finally:
        ray.shutdown()  # takes Serve down with it


def deploy(root: Path, replicas: int = 1, name: str = "bench") -> float:
    """Deploy the app serving tiny-t2v on `replicas` replicas; the seconds serve.run took."""
    start = time.perf_counter()
    serve.run(build_app(app_args(root, replicas)), name=name, route_prefix="/")
    return time.perf_counter() - start
