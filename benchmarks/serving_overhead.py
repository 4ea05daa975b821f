"""Serving overhead: the same tiny job run directly through `pipelines/` and through the HTTP API.

    python -m benchmarks.serving_overhead [--runs 5] [--steps 8 200] [--frames 81] [--size 128x64]
                                          [--address ADDRESS --url URL]

(a) direct: tiny-t2v loaded once, then per job `generate` + `encode_mp4` + `thumbnail_webp` in this process, with
    one torch thread: what a generator replica gets, since Ray sets OMP_NUM_THREADS=1 for an actor with a
    fractional `num_cpus`.
(b) HTTP: a real Ray Serve app serving only tiny-t2v, on Ray and Serve started in-process (or on a running
    cluster: `--address`, `--url`); per job POST /v1/videos, follow its events (SSE) to the final one, GET its
    content.

For each step count the two paths alternate, `runs` times each after one warm-up each, and their medians are
compared. The overhead (HTTP - direct) is fitted as a line over the step counts: its intercept is the fixed cost
per job, its slope the cost per denoising step. Both paths make the same MP4 bytes, so they do the same work.
`concurrency.py` and `job_timeline.py` time the same job with this module's `direct_job`, `http_job`, `serving` and
`deploy`; every benchmark that starts Ray does it with `join` and `add_cluster_args`.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ray
import torch
from httpx_sse import connect_sse
from ray import serve

from pipelines.generate import generate
from pipelines.loading import load_model
from pipelines.request import GenerationRequest
from pipelines.variants import Task, get_variant
from pipelines.video import encode_mp4, thumbnail_webp
from serve_app.app import build_app
from wan_client.client import dispatched

APP = "serving-overhead"
SERVE_URL = "http://127.0.0.1:8000"  # Serve's proxy where nothing else is said
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


def add_cluster_args(parser: argparse.ArgumentParser, http: bool = True) -> None:
    """`--address` (and for a benchmark over HTTP `--url`): measure on a running cluster instead of one started in
    this process."""
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster to deploy on (its GCS address, or auto); the benchmark's apps "
                             "go under their own names and route prefixes and are deleted afterwards "
                             "(default: start Ray and Serve in this process)")
    if http:
        parser.add_argument("--url", default=SERVE_URL, help="with --address: that cluster's Serve proxy "
                                                             "(default %(default)s)")


def join(address: str | None, num_cpus: int = 8) -> None:
    """Ray in this process: connected to the cluster at `address`, or a local one started with `num_cpus`."""
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def leave(address: str | None, apps: list[str]) -> None:
    """Undo `join`: on a cluster of others only this benchmark's apps go; one started here goes whole (Serve too)."""
    if address:
        for app in apps:
            serve.delete(app)
    ray.shutdown()


@contextmanager
def serving(app: str, address: str | None = None, url: str = SERVE_URL) -> Iterator[httpx.Client]:
    """A client of `app`'s route prefix on Serve's HTTP proxy: of the cluster at `address` (its proxy at `url`), or
    of Ray and Serve started in this process; `app` and what was started here are gone afterwards."""
    join(address)
    if not address:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=f"{url}/{app}", timeout=300) as client:
            yield client
    finally:
        leave(address, [app])


def deploy(root: Path, app: str, replicas: int = 1) -> float:
    """Deploy `app` serving tiny-t2v on `replicas` replicas under /`app`; the seconds serve.run took."""
    start = time.perf_counter()
    serve.run(build_app(app_args(root, replicas)), name=app, route_prefix=f"/{app}")
    return time.perf_counter() - start


FIXED_MS, PER_STEP_MS, RATIO = 30.0, 1.0, 1.05  # issue 15's targets


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed jobs per path and step count (default 5)")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 200],
                        help="denoising steps per job, two or more counts within 1..200 (default 8 200)")
    parser.add_argument("--frames", type=int, default=81, help="frames per job, 4k+1 (default 81)")
    parser.add_argument("--size", default="128x64",
                        help="WIDTHxHEIGHT (default 128x64: about 0.7 s direct at 8 steps and 2.6 s at 200 on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds at tiny sizes: that it still runs (CI)")
    add_cluster_args(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.steps, args.frames, args.size = 1, [1, 3], 5, f"{WIDTH}x{HEIGHT}"
    if len(set(args.steps)) < 2:
        parser.error("--steps needs two or more different counts to tell the fixed cost from the cost per step")
    size = tuple(int(side) for side in args.size.split("x"))
    torch.set_num_threads(1)

    direct: dict[int, list[float]] = {}
    http: dict[int, list[float]] = {}
    same = True
    with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp, serving(APP, args.address, args.url) as client:
        start = time.perf_counter()
        deployed = deploy(Path(tmp), APP)
        for steps in args.steps:
            direct_run, http_run = direct_job(steps, args.frames, size), http_job(client, steps, args.frames, size)
            same &= http_run() == direct_run()  # warm-ups; the first HTTP one is the first response
            if steps == args.steps[0]:
                first_response = time.perf_counter() - start
            direct[steps], http[steps] = [], []
            for _ in range(args.runs):
                direct[steps].append(timed(direct_run))
                http[steps].append(timed(http_run))

    print(f"wan-serve serving overhead: {MODEL} {args.size}, {args.frames} frames, seed {SEED}; {args.runs} runs "
          "per path and step count after 1 warm-up each, paths alternating")
    print("direct = pipelines/ generate + MP4 + thumbnail in-process (1 torch thread, as in the replica)")
    print("http   = POST /v1/videos, its events (SSE) to the final one, GET content (Ray Serve, same machine)")
    print()
    print(f"{'steps':>6}{'direct ms':>12}{'http ms':>10}{'http-direct':>13}{'http/direct':>13}")
    overhead = {}
    for steps in args.steps:
        d, h = statistics.median(direct[steps]) * 1e3, statistics.median(http[steps]) * 1e3
        overhead[steps] = h - d
        print(f"{steps:>6}{d:>12.1f}{h:>10.1f}{h - d:>+13.1f}{h / d:>12.3f}x")
    fit = statistics.linear_regression(list(overhead), list(overhead.values()))
    longest = max(args.steps)
    ratio = statistics.median(http[longest]) / statistics.median(direct[longest])
    print()
    fixed = fit.intercept
    print(f"fixed overhead per job: {fixed:.1f} ms (target <= {FIXED_MS:g} ms: {met(fixed <= FIXED_MS)})")
    print(f"overhead per step: {fit.slope:.2f} ms (target <= {PER_STEP_MS:g} ms: {met(fit.slope <= PER_STEP_MS)})")
    print(f"http / direct at {longest} steps ({statistics.median(direct[longest]):.2f} s direct): {ratio:.3f}x "
          f"(target <= {RATIO} for a job of about 2 s: {met(ratio <= RATIO)})")
    print(f"time to first response: {first_response:.1f} s from serve.run (serve.run itself: {deployed:.1f} s)")
    print(f"same MP4 bytes from both paths: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
