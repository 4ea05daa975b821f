"""Where a job's time goes: tiny-t2v jobs over HTTP, each one's path read back from Ray Serve's request logs.

    python -m benchmarks.job_timeline [--runs 5] [--steps 8] [--frames 81] [--size 128x64] [--address ADDRESS --url URL]

Serve logs a line for every request a replica serves: each HTTP request at the gateway, each handle call at the
replica that served it, with its latency. The app is deployed with JSON logs (`LoggingConfig(encoding="JSON")`), so
every line carries its end time in nanoseconds. After a warm-up, `runs` jobs run one at a time (POST /v1/videos,
its events to the final one, GET its content, as `serving_overhead.http_job`); for the median one the calls that
ended within it are printed as a timeline, and its time is split into the generator's call, the encoder's call and
the rest: the serving overhead. The floor of that rest is set by what one hop costs, measured alongside: a bare
HTTP request through Serve's proxy and gateway (`GET /health`), and a bare handle call to a replica
(`JobTracker.queue`, from this process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import serve
from ray.serve.schema import LoggingConfig

from benchmarks.serving_overhead import HEIGHT, WIDTH, add_cluster_args, app_args, http_job, serving, timed
from serve_app.app import build_app

APP = "timeline"


@dataclass(frozen=True)
class Call:
    """One request a replica served: when it started and ended (ms from the job's POST) and what it was."""

    start_ms: float
    end_ms: float
    replica: str
    what: str


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    """The median of `runs` timed calls of `fn`, after one untimed."""
    fn()
    return statistics.median(timed(fn) for _ in range(runs)) * 1e3


def calls_between(start_ns: int, end_ns: int) -> list[Call]:
    """Every request the app's replicas served that ended within [start_ns, end_ns], from their JSON logs."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    calls = []
    for path in logs.glob(f"replica_{APP}_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            # an access line reads "CALL generate OK 955.5ms" or "POST /v1/videos 200 19.8ms"
            words = record.get("message", "").split()
            if not (start_ns <= record["timestamp_ns"] <= end_ns and words and words[-1].endswith("ms")):
                continue
            try:
                latency = float(words[-1][:-2])
            except ValueError:
                continue
            end_ms = (record["timestamp_ns"] - start_ns) / 1e6
            calls.append(Call(end_ms - latency, end_ms, record.get("deployment", "?"), " ".join(words[:-1])))
    return sorted(calls, key=lambda c: c.start_ms)


def latency(calls: list[Call], replica: str, method: str) -> float:
    return sum(c.end_ms - c.start_ms for c in calls if c.replica.endswith(replica) and c.what.startswith(method))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="jobs timed after one warm-up; the median is shown")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per job (default 8)")
    parser.add_argument("--frames", type=int, default=81, help="frames per job, 4k+1 (default 81)")
    parser.add_argument("--size", default="128x64", help="WIDTHxHEIGHT (default 128x64)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds at tiny sizes: that it still runs (CI)")
    add_cluster_args(parser)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.steps, args.frames, args.size = 1, 1, 5, f"{WIDTH}x{HEIGHT}"
    size = tuple(int(side) for side in args.size.split("x"))
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp, serving(APP, args.address, args.url) as client:
        serve.run(build_app(app_args(Path(tmp))), name=APP, route_prefix=f"/{APP}",
                  logging_config=LoggingConfig(encoding="JSON"))
        job = http_job(client, args.steps, args.frames, size)
        job()  # warm-up
        jobs = []
        for _ in range(args.runs):
            start = time.time_ns()
            job()
            end = time.time_ns()
            time.sleep(0.5)  # its last access lines reach their files, and the next job's calls start after them
            jobs.append(((end - start) / 1e6, calls_between(start, end)))
        tracker = serve.get_deployment_handle("JobTracker", app_name=APP)
        http_ms = median_ms(lambda: client.get("/health").raise_for_status(), 5 * args.runs)
        call_ms = median_ms(lambda: tracker.queue.remote().result(), 5 * args.runs)

    total, calls = sorted(jobs, key=lambda j: j[0])[len(jobs) // 2]
    generate = latency(calls, "Generator-tiny-t2v", "CALL generate")
    encode = latency(calls, "VideoEncoder", "CALL encode")
    if not (generate and encode):
        raise SystemExit(f"the job's generator and encoder calls are not in Serve's logs: {calls}")
    print(f"wan-serve job timeline: tiny-t2v {args.size}, {args.frames} frames, {args.steps} steps; the median of "
          f"{args.runs} jobs after a warm-up, one at a time (POST, events to the final one, GET content)")
    print()
    print(f"{'start ms':>9}{'end ms':>9}  {'replica':<28}request")
    for c in calls:
        print(f"{c.start_ms:>9.1f}{c.end_ms:>9.1f}  {c.replica:<28}{c.what}")
    print()
    print(f"job at the client: {total:.1f} ms = generator call {generate:.1f} + encoder call {encode:.1f} "
          f"+ the rest {total - generate - encode:.1f} ms")
    print(f"one bare HTTP request through Serve (GET /health): {http_ms:.1f} ms; "
          f"one bare handle call: {call_ms:.1f} ms")


if __name__ == "__main__":
    main()
