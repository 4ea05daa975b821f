"""Serving overhead: the same tiny job run directly through `pipelines/` and through the HTTP API.

    python -m benchmarks.serving_overhead [--runs 5] [--steps 8 200] [--frames 81] [--size 128x64]

(a) direct: tiny-t2v loaded once, then per job `generate` + `encode_mp4` + `thumbnail_webp` in this process, with
    one torch thread (what a generator replica gets).
(b) HTTP: a real Ray Serve app started in-process serving only tiny-t2v; per job POST /v1/videos, follow its
    events (SSE) to the final one, GET its content. See `benchmarks/_common.py`.

For each step count the two paths alternate, `runs` times each after one warm-up each, and their medians are
compared. The overhead (HTTP - direct) is fitted as a line over the step counts: its intercept is the fixed cost
per job, its slope the cost per denoising step. Both paths make the same MP4 bytes, so they do the same work.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import HEIGHT, MODEL, SEED, WIDTH, deploy, direct_job, http_job, serving, timed

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
    with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp, serving() as client:
        start = time.perf_counter()
        deployed = deploy(Path(tmp))
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
