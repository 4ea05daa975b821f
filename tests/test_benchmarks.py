"""Every benchmark's `--smoke` mode, so none can rot: each runs in seconds at tiny sizes and must still measure what it
says: a figure parsed from its output, in a range only a working measurement gives, and its own check of the outputs.
Those on Ray deploy on the tests' cluster (`--address`), each under its own route prefix: a cluster of their own
each would cost the 2 cores four more Ray heads."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"(-?\d+(?:\.\d+)?)"
SMOKE_TIMEOUT_S = 420  # all six run at once on the 2 cores
# those on Ray, on the tests' cluster: whether they speak HTTP, so need its proxy's URL
ON_RAY = {"concurrency": True, "job_timeline": True, "serving_overhead": True, "stage_handoff": False}
# benchmark: (a check of its outputs it prints, or None; a pattern of its figures; what must hold of them)
SMOKES: dict[str, tuple[str | None, str, Callable[..., bool]]] = {
    # the default method's PSNR on held-out frames of a rendered scene: a broken flow or blend scores below 20 dB
    "interpolation": (None, rf"ours \(DIS ultrafast, default\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
                      lambda fps, ms, psnr: fps > 0 and ms > 0 and 20 <= psnr <= 60),
    "stage_handoff": ("same clip on both paths: yes",
                      rf"generate {NUMBER} s \+ MP4 {NUMBER} s = {NUMBER} s",
                      lambda gen, mp4, flow: gen > 0 and mp4 >= 0 and abs(gen + mp4 - flow) <= 0.11),
    "serving_overhead": ("same MP4 bytes from both paths: yes",  # the service does exactly the direct work
                         rf"http / direct at \d+ steps \({NUMBER} s direct\): {NUMBER}x",
                         lambda direct, ratio: direct > 0 and 0.5 <= ratio <= 100),
    "concurrency": ("every job made the direct path's MP4: yes",
                    rf"direct, back to back\s+{NUMBER}\s+{NUMBER}",
                    lambda seconds, rate: seconds > 0 and rate > 0),
    # the replicas' ratio is left free: beside the other smokes on 2 cores, contention alone can move it 5x; no tiny
    # job takes under a millisecond, so a rate above 1000 jobs/s means the clock timed no work
    "gpu_step_time": ("every configuration made the same frame shape: yes",
                      rf"one {NUMBER} jobs/s, two half-\w+ {NUMBER} jobs/s: {NUMBER}x",
                      lambda one, two, ratio: 0 < one < 1000 and 0 < two < 1000 and abs(ratio * one / two - 1) < 0.05),
    # it found the job's generator and encoder calls in Serve's logs, and they fit inside the job
    "job_timeline": (None, rf"job at the client: {NUMBER} ms = generator call {NUMBER} \+ encoder call {NUMBER}",
                     lambda total, generate, encode: generate > 0 and encode > 0 and generate + encode <= total),
}


def test_every_benchmark_has_its_smoke_here() -> None:
    found = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert found == set(SMOKES), "a benchmark CI does not run can rot unnoticed"


@pytest.fixture(scope="module")
def smoke_runs(cluster_url: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, tuple[subprocess.Popen, Path]]]:
    """Every smoke started at once, each its own process: most of a smoke is start-up waiting, so together they take
    about as long as the longest, not the sum. Output goes to files, which never fill up and block a process as an
    unread pipe would."""
    logs = tmp_path_factory.mktemp("smokes")
    address = ["--address", ray.get_runtime_context().gcs_address]
    runs = {}
    for name in sorted(SMOKES):
        with (logs / f"{name}.out").open("w") as out, (logs / f"{name}.err").open("w") as err:
            command = [sys.executable, "-m", f"benchmarks.{name}", "--smoke", *(address if name in ON_RAY else []),
                       *(["--url", cluster_url] if ON_RAY.get(name) else [])]
            runs[name] = (subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err), logs / name)
    yield runs
    for run, _ in runs.values():
        run.kill()


@pytest.mark.parametrize("benchmark", sorted(SMOKES))
def test_benchmark_smoke(benchmark: str, smoke_runs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    says, pattern, sane = SMOKES[benchmark]
    run, log = smoke_runs[benchmark]
    returncode = run.wait(timeout=SMOKE_TIMEOUT_S)
    stdout = log.with_suffix(".out").read_text()
    assert returncode == 0, log.with_suffix(".err").read_text()[-3000:]
    assert says is None or says in stdout, stdout
    found = re.search(pattern, stdout)
    assert found, f"no figure matching {pattern!r} in:\n{stdout}"
    figures = [float(f) for f in found.groups()]
    assert sane(*figures), f"{benchmark} measured {figures}, out of range:\n{stdout}"
