"""Autoscaling on a real Serve app: a burst of jobs scales a model's generator up from one replica, the new replica
takes a job of the burst, and the replicas scale back down once the burst is gone."""

from __future__ import annotations

import httpx

from tests.support.app import BURST_MODEL, SCALING_APP, replica_states
from tests.support.jobs import ENDED, until, wait_for


def running_replicas() -> int:
    return replica_states(SCALING_APP, BURST_MODEL).get("RUNNING", 0)


def test_a_burst_scales_a_generator_up_and_back_down(scaling: httpx.Client) -> None:
    assert running_replicas() == 1
    # minutes of steps each on 2 cores: the queue outlives the autoscaler's reaction on any machine, and the burst is
    # cancelled once it has shown what it is for
    body = {"model": BURST_MODEL, "prompt": "a crowd", "size": "320x192", "num_frames": 81, "num_inference_steps": 200}
    burst = [scaling.post("/v1/videos", json=body).json()["id"] for _ in range(4)]
    scale_up_s = until(lambda: running_replicas() == 2, 180, "a scale-up")
    print(f"burst of 4 jobs -> a second replica RUNNING after {scale_up_s:.1f} s")
    until(lambda: [scaling.get(f"/v1/videos/{i}").json()["status"] for i in burst].count("in_progress") == 2,
          60, "the second replica to take a job")
    for video_id in burst:
        scaling.post(f"/v1/videos/{video_id}/cancel")
    assert [wait_for(scaling, i, ENDED, timeout_s=60)["status"] for i in burst] == ["cancelled"] * 4
    until(lambda: running_replicas() == 1, 120, "the scale-down")
