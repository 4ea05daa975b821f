"""Jobs across restarts, on a Ray cluster of this module's own (conftest runs it before the shared app):
a crash of the whole cluster leaves finished jobs retrievable and ends in-flight ones `interrupted`; a
redeploy lets a running job finish on its old replicas."""

from __future__ import annotations

import httpx
import ray
from ray import serve

from serve_app.app import build_app
from tests.media import probe
from tests.support.app import Cluster, app_args
from tests.support.jobs import ENDED, poll, until, wait_for


def test_a_crash_keeps_finished_jobs_and_ends_interrupted_ones(cluster: Cluster, tmp_path) -> None:
    # room for one job at a time, so a second one is turned away while the first runs
    args = app_args(tmp_path, ["tiny-t2v"], max_queued_jobs=1)
    serve.run(build_app(args), name="restart", route_prefix="/restart")
    with httpx.Client(base_url=f"{cluster.url}/restart", timeout=60) as client:
        done = client.post("/v1/videos", json={"prompt": "kept", "num_frames": 9}).json()
        assert wait_for(client, done["id"], ENDED)["status"] == "completed"
        running = client.post("/v1/videos", json={"prompt": "cut short", "num_frames": 81,
                                                  "num_inference_steps": 200}).json()
        wait_for(client, running["id"], {"in_progress"})
        full = client.post("/v1/videos", json={"prompt": "one too many"})
        assert full.status_code == 429 and full.headers["retry-after"] == "30"
        assert (full.json()["error"]["type"], full.json()["error"]["code"]) == ("rate_limit_error", "queue_full")
        listed = [v["id"] for v in client.get("/v1/videos").json()["data"]]
        assert listed == [running["id"], done["id"]], "a create answered 429 made no job"

    ray.shutdown()  # the whole cluster goes, mid-job: no replica is left to end the running job
    cluster.start()
    serve.run(build_app(args), name="restart", route_prefix="/restart")  # the new tracker sweeps at start
    with httpx.Client(base_url=f"{cluster.url}/restart", timeout=60) as client:
        kept = client.get(f"/v1/videos/{done['id']}").json()
        assert kept["status"] == "completed"
        frames, _, _ = probe(client.get(f"/v1/videos/{done['id']}/content").content)
        assert len(frames) == 9
        lost = client.get(f"/v1/videos/{running['id']}").json()
        assert (lost["status"], lost["error"]["code"]) == ("failed", "interrupted"), lost
        after = client.post("/v1/videos", json={"prompt": "the slot is free again", "num_frames": 5})
        assert after.status_code == 200, after.text
        assert wait_for(client, after.json()["id"], ENDED)["status"] == "completed"
    serve.delete("restart")


def test_a_redeploy_lets_a_running_generation_finish(cluster: Cluster, tmp_path) -> None:
    args = app_args(tmp_path, ["tiny-t2v"], graceful_shutdown_timeout_s=300)
    serve.run(build_app(args), name="redeploy", route_prefix="/redeploy")
    with httpx.Client(base_url=f"{cluster.url}/redeploy", timeout=60) as client:
        # seconds of steps on 2 cores (81 frames at 64x32 took 1.3 s, less than a redeploy takes to start)
        running = client.post("/v1/videos", json={"prompt": "through a redeploy", "size": "160x96", "num_frames": 81,
                                                  "num_inference_steps": 200}).json()
        path = f"/v1/videos/{running['id']}"
        before = poll(client, path, lambda v: v["step"] >= 1 or v["status"] in ENDED, what="the job's first step")
        assert before["status"] == "in_progress", before
        # A new configuration: Serve starts new replicas of every deployment (the job tracker too) and drains the
        # old ones; the old generator and flow runner keep the running job until it ends. Not waited for here, so
        # the job is read once the controller has taken the redeploy on.
        args["models"][0]["ray_actor_options"] = {"num_cpus": 0.11}
        serve._run(build_app(args), name="redeploy", route_prefix="/redeploy", _blocking=False)
        during = client.get(path).json()
        assert during["status"] == "in_progress" and before["step"] <= during["step"] < 200, \
            f"the redeploy began while the job was running: {before['step']} then {during}"
        done = wait_for(client, running["id"], ENDED, timeout_s=300)
        assert (done["status"], done["step"]) == ("completed", 200), done
        frames, _, _ = probe(client.get(f"{path}/content").content)
        assert frames.shape == (81, 96, 160, 3)
        until(lambda: serve.status().applications["redeploy"].status == "RUNNING", 120, "the redeploy to finish")
        after = client.post("/v1/videos", json={"prompt": "on the new replica", "num_frames": 5}).json()
        assert wait_for(client, after["id"], ENDED)["status"] == "completed"
    serve.delete("redeploy")
