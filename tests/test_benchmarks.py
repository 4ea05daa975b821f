"""Every benchmark's `--smoke` mode, so none can rot: each runs in seconds at tiny sizes and must still say what
it measures. They start Ray themselves (in their own process), so conftest runs them before the shared app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


SMOKES = [
    ("interpolation", "ours (DIS ultrafast, default)"),
    ("stage_handoff", "same clip on both paths: yes"),
    ("serving_overhead", "same MP4 bytes from both paths: yes"),  # the service does exactly the direct work
    ("concurrency", "every job made the direct path's MP4: yes"),
    ("gpu_step_time", "every configuration made the same frame shape: yes"),
    ("job_timeline", "job at the client:"),  # it found the job's generator and encoder calls in Serve's logs
]


def test_every_benchmark_has_its_smoke_here() -> None:
    found = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert found == {name for name, _ in SMOKES}, "a benchmark CI does not run can rot unnoticed"


@pytest.mark.parametrize(("benchmark", "says"), SMOKES)
def test_benchmark_smoke(benchmark: str, says: str) -> None:
    run = subprocess.run([sys.executable, "-m", f"benchmarks.{benchmark}", "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert says in run.stdout, run.stdout
