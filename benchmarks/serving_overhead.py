"""Serving overhead: the same tiny job run directly through `pipelines/` and through the HTTP API.

    python benchmarks/serving_overhead.py [--runs 5] [--steps 8] [--frames 17]

(a) direct: load tiny-t2v once, then per job `generate` + `encode_mp4` + `thumbnail_webp`, the work
    the service does for a video job, in this process.
(b) HTTP: a real Ray Serve app started in-process serving only tiny-t2v; per job POST /v1/videos,
    poll GET /v1/videos/{id} every 20 ms until completed, then GET its content.

Both are timed end to end per job, after one warm-up job each (for HTTP the warm-up is the first request,
which also gives the time to first response). The direct path uses one torch thread because that is what
the generator replica gets: Ray sets OMP_NUM_THREADS=1 for an actor with a fractional `num_cpus`.
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import ray
import torch
from ray import serve

from pipelines.generate import generate
from pipelines.loading import load_model
from pipelines.request import GenerationRequest
from pipelines.variants import Task, get_variant
from pipelines.video import encode_mp4, thumbnail_webp
from serve_app.app import build_app

MODEL = "tiny-t2v"
WIDTH, HEIGHT = 64, 32
SEED = 1234
PROMPT = "a red fox running through fresh snow"
POLL_S = 0.02
JOB_TIMEOUT_S = 300.0


def timed(fn: Callable[[], bytes], runs: int) -> tuple[list[float], bytes]:
    """Seconds per call of `fn`, and the last call's output."""
    times, out = [], b""
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def direct_job(args: argparse.Namespace) -> Callable[[], bytes]:
    variant = get_variant(MODEL)
    model = load_model(variant)
    request = GenerationRequest(
        task=Task.T2V, prompt=PROMPT, width=WIDTH, height=HEIGHT, num_frames=args.frames,
        num_inference_steps=args.steps, guidance_scale=variant.guidance_scale,
        guidance_scale_2=variant.guidance_scale_2, flow_shift=variant.flow_shift, seed=SEED,
        negative_prompt=variant.negative_prompt,  # what the service sends when a request has none
    )

    def run() -> bytes:
        frames = generate(model, request)
        thumbnail_webp(frames)
        return encode_mp4(frames, variant.fps)

    return run


def http_job(client: httpx.Client, args: argparse.Namespace) -> Callable[[], bytes]:
    body = {"prompt": PROMPT, "model": MODEL, "size": f"{WIDTH}x{HEIGHT}", "num_frames": args.frames,
            "num_inference_steps": args.steps, "seed": SEED}

    def run() -> bytes:
        created = client.post("/v1/videos", json=body)
        created.raise_for_status()
        video_id = created.json()["id"]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            video = client.get(f"/v1/videos/{video_id}").json()
            if video["status"] == "completed":
                break
            if video["status"] in ("failed", "cancelled") or time.monotonic() > deadline:
                raise RuntimeError(f"{video_id} ended {video['status']}: {video.get('error')}")
            time.sleep(POLL_S)
        content = client.get(f"/v1/videos/{video_id}/content")
        content.raise_for_status()
        return content.content

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(root: Path) -> dict[str, Any]:
    return {
        "job_db": str(root / "jobs.db"),
        "storage": {"root": str(root / "outputs")},
        "models": [{"name": MODEL, "ray_actor_options": {"num_cpus": 0.1}}],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed jobs per path, after one warm-up (default 5)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per job (default 8)")
    parser.add_argument("--frames", type=int, default=17, help="frames per job, 4k+1 (default 17)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds at tiny sizes: that it still runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.steps, args.frames = 1, 2, 5
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)

    # (a) Direct, before Ray starts, with the replica's thread count.
    torch.set_num_threads(1)
    direct_run = direct_job(args)
    direct_run()  # warm-up
    direct, direct_mp4 = timed(direct_run, args.runs)

    # (b) Through HTTP.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        http_run = http_job(client, args)
        start = time.perf_counter()
        serve.run(build_app(app_args(Path(tmp))), name="bench", route_prefix="/")
        deployed = time.perf_counter() - start
        http_run()  # the first request is the warm-up
        first_response = time.perf_counter() - start
        http, http_mp4 = timed(http_run, args.runs)
    ray.shutdown()  # takes Serve down with it

    d_ms, h_ms = statistics.median(direct) * 1e3, statistics.median(http) * 1e3
    print(f"wan-serve serving overhead: {MODEL} {WIDTH}x{HEIGHT}, {args.frames} frames, {args.steps} steps, "
          f"seed {SEED}; {args.runs} runs per path after 1 warm-up")
    print("direct = pipelines/ generate + MP4 + thumbnail in-process (1 torch thread, as in the replica)")
    print("http   = POST /v1/videos, poll every 20 ms until completed, GET content (Ray Serve, same machine)")
    print()
    print(f"{'path':<8}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for name, times in (("direct", direct), ("http", http)):
        ms = [t * 1e3 for t in times]
        print(f"{name:<8}{statistics.median(ms):>12.1f}{min(ms):>10.1f}{max(ms):>10.1f}")
    print()
    print(f"serving overhead: http / direct = {h_ms / d_ms:.2f}x, +{h_ms - d_ms:.0f} ms per job")
    print(f"time to first response: {first_response:.1f} s from serve.run (serve.run itself: {deployed:.1f} s)")
    print(f"same MP4 bytes from both paths: {'yes' if http_mp4 == direct_mp4 else 'no'}")


if __name__ == "__main__":
    main()
