"""Autoscaling on a real Serve app: a burst of jobs scales a model's generator up from one replica, the new replica
takes a job of the burst, and the replicas scale back down once the burst is gone."""

from __future__ import annotations

import httpx
from ray import serve

from serve_app.app import build_app
from serve_app.config import generator_name
from tests.support.app import app_args
from tests.support.jobs import ENDED, until, wait_for

APP = "autoscale"


def running_replicas() -> int:
    deployment = serve.status().applications[APP].deployments[generator_name("tiny-t2v")]
    return deployment.replica_states.get("RUNNING", 0)


def test_a_burst_scales_a_generator_up_and_back_down(cluster_url: str, tmp_path) -> None:
    # Serve's handles push their queue lengths every `metrics_interval_s` (10 s by default): half a second here, so the
    # controller sees the burst within a second, and the look-back spans a few pushes.
    autoscaling = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                   "upscale_delay_s": 0, "downscale_delay_s": 2, "metrics_interval_s": 0.5, "look_back_period_s": 2}
    serve.run(build_app(app_args(tmp_path, ["tiny-t2v"], autoscaling_config=autoscaling)), name=APP,
              route_prefix=f"/{APP}")
    try:
        assert running_replicas() == 1
        with httpx.Client(base_url=f"{cluster_url}/{APP}", timeout=60) as client:
            # minutes of steps each on 2 cores: the queue outlives the autoscaler's reaction on any machine, and the
            # burst is cancelled once it has shown what it is for
            body = {"prompt": "a crowd", "size": "320x192", "num_frames": 81, "num_inference_steps": 200}
            burst = [client.post("/v1/videos", json=body).json()["id"] for _ in range(4)]
            scale_up_s = until(lambda: running_replicas() == 2, 180, "a scale-up")
            print(f"burst of 4 jobs -> a second replica RUNNING after {scale_up_s:.1f} s")
            until(lambda: [client.get(f"/v1/videos/{i}").json()["status"] for i in burst].count("in_progress") == 2,
                  60, "the second replica to take a job")
            for video_id in burst:
                client.post(f"/v1/videos/{video_id}/cancel")
            assert [wait_for(client, i, ENDED, timeout_s=60)["status"] for i in burst] == ["cancelled"] * 4
            until(lambda: running_replicas() == 1, 120, "the scale-down")
    finally:
        serve.delete(APP, _blocking=False)
