"""Apps on the tests' Ray cluster: their arguments, a cluster of a module's own, what the packages' apps (keyed/,
intake/, scaling/) are called and serve, and the keyed app's keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from serve_app.app import build_app
from serve_app.config import AppConfig, generator_name
from tests.s3server import free_port

APP = "wan"
TINY_MODELS = ["tiny-t2v", "tiny-i2v", "tiny-flf2v", "tiny-vace", "tiny-ti2v", "tiny-a14b"]
ENHANCER = {"model": "tiny", "max_new_tokens": 32, "timeout_s": 5}
KEYED_APP = "keyed"  # tests/keyed/'s app with API keys, on the tests' cluster
KEY_A, KEY_B, ADMIN = "sk-alice-0123456789", "sk-bob-9876543210", "sk-admin-abcdef"
FUZZ_KEY, STUDIO_KEY = "sk-fuzz-0123456789", "sk-studio-0123456789"
SCALING_APP = "scaling"  # tests/scaling/'s app: one model that scales to zero, one that a burst scales up
ZERO_MODEL, BURST_MODEL = "tiny-t2v", "tiny-ti2v"
# Serve's scale-from-zero is immediate (no upscale delay from zero); the short delays and metric interval let the
# test see the scale-down too, within seconds of the job's end.
ZERO = {"min_replicas": 0, "max_replicas": 1, "target_ongoing_requests": 1,
        "downscale_delay_s": 1, "downscale_to_zero_delay_s": 1, "metrics_interval_s": 0.5, "look_back_period_s": 1}
# Serve's handles push their queue lengths every `metrics_interval_s` (10 s by default): half a second here, so the
# controller sees a burst within a second, and the look-back spans a few pushes.
BURST = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
         "upscale_delay_s": 0, "downscale_delay_s": 2, "metrics_interval_s": 0.5, "look_back_period_s": 2}


def app_args(root: Path, models: list[str], **extra: Any) -> dict[str, Any]:
    """`build_app`'s arguments: jobs and outputs under `root`, each model on a tenth of a CPU with `extra`."""
    return {
        "job_db": str(root / "jobs.db"),
        "storage": {"root": str(root / "outputs")},
        "models": [{"name": m, "ray_actor_options": {"num_cpus": 0.1}, **extra} for m in models],
    }


def shared_args(root: Path) -> dict[str, Any]:
    """The shared app's arguments: the embedded default's models (less tiny-i2v-a14b) and its prompt enhancer."""
    return app_args(root, [*TINY_MODELS, "tiny-animate"]) | {
        "enhancer": ENHANCER | {"ray_actor_options": {"num_cpus": 0.1}}}


@contextmanager
def deployed(cluster_url: str, name: str, args: dict[str, Any]) -> Iterator[httpx.Client]:
    """`args`' app on the tests' cluster under /`name`, and a client of it; deleted afterwards, its drain not
    waited for."""
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    with httpx.Client(base_url=f"{cluster_url}/{name}", timeout=60) as client:
        yield client
    serve.delete(name, _blocking=False)


def app_config(models: list[str] = TINY_MODELS, **extra: Any) -> AppConfig:
    """A validated config serving `models`, for the router and limits in-process (nothing is deployed)."""
    return AppConfig.model_validate({"models": [{"name": m} for m in models], **extra})


def as_key(url: str, key: str | None) -> httpx.Client:
    """A client of `url` that sends `key` as its Bearer token (none: no Authorization header)."""
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"} if key else {})


def replica_states(app: str, model: str) -> dict[str, int]:
    """`model`'s generator replicas in `app`, by state (RUNNING, STARTING, ...)."""
    deployment = serve.status().applications[app].deployments[generator_name(model)]
    return {str(state): n for state, n in deployment.replica_states.items()}


def replica_logs(app: str, deployment: str = "", lines: int = 20) -> str:
    """The last lines of each replica log of `app` (this Ray session's), for a message that says why."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    tails = [f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
             for path in sorted(logs.glob(f"replica_{app}_{deployment}*.log"))]
    return "\n".join(tails) or f"no replica logs of {app} in {logs}"


class Cluster:
    """A local Ray cluster with Serve: a module's own (one in OWN_RAY), which a test may crash and start again, or
    the session's (`conftest.py:cluster_url`)."""

    def __init__(self, num_cpus: int = 4, system_config: dict[str, Any] | None = None) -> None:
        self.num_cpus, self.system_config = num_cpus, system_config or {}
        self.url = ""

    def start(self) -> None:
        ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                 _system_config=self.system_config)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        self.url = f"http://127.0.0.1:{port}"
