"""Concurrency: jobs submitted all at once to one and to two generator replicas, against back-to-back direct calls.

    python -m benchmarks.concurrency [--jobs 8] [--steps 200] [--frames 81] [--size 128x64] [--runs 1]
                                     [--address ADDRESS --url URL]

The baseline runs `jobs` jobs one after another directly through `pipelines/` in this process with one torch
thread (`serving_overhead.direct_job`: generate, MP4, thumbnail). Then a real Ray Serve app serving tiny-t2v takes
the same jobs all at once over HTTP (POST each, follow its events, GET its content), first with one generator replica
and then with two; each replica has one torch thread, so two replicas use both of this machine's 2 cores and the
rest of the service (gateway, flow runner, tracker, encoder, uploader) shares them. Throughput is jobs per second
from the first POST to the last content; each configuration warms up with one job per replica first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from benchmarks.serving_overhead import HEIGHT, MODEL, WIDTH, add_cluster_args, deploy, direct_job, http_job, serving

APP = "concurrency"
TARGETS = {1: 0.95, 2: 1.8}  # issue 15: throughput over back-to-back direct calls, by generator replicas


def all_at_once(
    client: httpx.Client, jobs: int, steps: int, frames: int, size: tuple[int, int]
) -> tuple[float, list[bytes]]:
    """Seconds for `jobs` jobs submitted together to finish, and their MP4s."""
    run = http_job(client, steps, frames, size)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        start = time.perf_counter()
        mp4s = list(pool.map(lambda _: run(), range(jobs)))
        return time.perf_counter() - start, mp4s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per configuration (default 8)")
    parser.add_argument("--steps", type=int, default=200, help="denoising steps per job, 1..200 (default 200)")
    parser.add_argument("--frames", type=int, default=81, help="frames per job, 4k+1 (default 81)")
    parser.add_argument("--size", default="128x64", help="WIDTHxHEIGHT (default 128x64: about 2.6 s direct on 2 cores)")
    parser.add_argument("--runs", type=int, default=1, help="timed rounds per configuration; medians (default 1)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds at tiny sizes: that it still runs (CI)")
    add_cluster_args(parser)
    args = parser.parse_args()
    targets = TARGETS
    if args.smoke:  # one deploy, not two: the two replicas' row runs every line the one replica's does
        args.jobs, args.steps, args.frames, args.runs, args.size = 2, 2, 5, 1, f"{WIDTH}x{HEIGHT}"
        targets = {2: TARGETS[2]}
    size = tuple(int(side) for side in args.size.split("x"))
    torch.set_num_threads(1)

    seconds: dict[str, float] = {}
    same = True
    with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp, serving(APP, args.address, args.url) as client:
        direct_run = direct_job(args.steps, args.frames, size)
        reference = direct_run()  # warm-up
        rounds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            for _ in range(args.jobs):
                same &= direct_run() == reference
            rounds.append(time.perf_counter() - start)
        seconds["direct, back to back"] = statistics.median(rounds)
        for replicas in targets:
            deploy(Path(tmp), APP, replicas)
            all_at_once(client, replicas, args.steps, args.frames, size)  # warm-up: one job per replica
            rounds = []
            for _ in range(args.runs):
                took, mp4s = all_at_once(client, args.jobs, args.steps, args.frames, size)
                rounds.append(took)
                same &= all(m == reference for m in mp4s)
            seconds[f"http, all at once, {replicas} replica{'s' * (replicas > 1)}"] = statistics.median(rounds)

    baseline = args.jobs / seconds["direct, back to back"]
    print(f"wan-serve concurrency: {args.jobs} jobs of {MODEL} {args.size}, {args.frames} frames, {args.steps} "
          f"steps; median of {args.runs} round(s) after a warm-up; 1 torch thread per generator and for direct")
    print()
    print(f"{'path':<34}{'seconds':>9}{'jobs/s':>9}{'vs direct':>11}  target")
    for (name, took), target in zip(seconds.items(), [None, *targets.values()], strict=True):
        ratio = args.jobs / took / baseline
        goal = "" if target is None else f">= {target}x: {'met' if ratio >= target else 'NOT met'}"
        print(f"{name:<34}{took:>9.2f}{args.jobs / took:>9.2f}{ratio:>10.2f}x  {goal}")
    print(f"every job made the direct path's MP4: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
