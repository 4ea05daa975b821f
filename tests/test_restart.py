"""Jobs survive an application restart: completed ones stay retrievable, in-flight ones end failed."""

from __future__ import annotations

import httpx
from ray import serve

from serve_app.app import build_app
from tests.conftest import app_args, wait_for
from tests.media import probe

DONE = {"completed", "failed", "cancelled"}


def test_restart_keeps_finished_jobs_and_fails_interrupted_ones(serve_url: str, tmp_path) -> None:
    # A generator that gives up in-flight work 1 s into shutdown, so the restart interrupts a running job;
    # and room for one job at a time, so a second one is turned away while it runs.
    args = app_args(tmp_path, ["tiny-t2v"], graceful_shutdown_timeout_s=1, max_queued_jobs=1)
    serve.run(build_app(args), name="restart", route_prefix="/restart")
    with httpx.Client(base_url=f"{serve_url}/restart", timeout=60) as client:
        done = client.post("/v1/videos", json={"prompt": "kept", "num_frames": 9}).json()
        assert wait_for(client, done["id"], DONE)["status"] == "completed"
        running = client.post("/v1/videos", json={"prompt": "cut short", "num_frames": 81,
                                                  "num_inference_steps": 200}).json()
        wait_for(client, running["id"], {"in_progress"})
        full = client.post("/v1/videos", json={"prompt": "one too many"})
        assert full.status_code == 429 and full.headers["retry-after"]
        assert full.json()["error"]["type"] == "rate_limit_error"

        serve.delete("restart")
        serve.run(build_app(args), name="restart", route_prefix="/restart")

        kept = client.get(f"/v1/videos/{done['id']}").json()
        assert kept["status"] == "completed"
        frames, _, _ = probe(client.get(f"/v1/videos/{done['id']}/content").content)
        assert len(frames) == 9
        lost = client.get(f"/v1/videos/{running['id']}").json()
        assert lost["status"] == "failed", lost
        assert lost["error"]["code"] in {"interrupted", "generation_failed"} and lost["error"]["message"]
        listed = [v["id"] for v in client.get("/v1/videos").json()["data"]]
        assert listed == [running["id"], done["id"]]
    serve.delete("restart")


def test_a_redeploy_lets_a_running_generation_finish(serve_url: str, tmp_path) -> None:
    args = app_args(tmp_path, ["tiny-t2v"], graceful_shutdown_timeout_s=300)
    serve.run(build_app(args), name="redeploy", route_prefix="/redeploy")
    with httpx.Client(base_url=f"{serve_url}/redeploy", timeout=60) as client:
        running = client.post("/v1/videos", json={"prompt": "through a redeploy", "num_frames": 81,
                                                  "num_inference_steps": 200}).json()
        before = wait_for(client, running["id"], {"in_progress"})
        # A new configuration: Serve starts new replicas of every deployment (the job tracker too) and
        # drains the old ones; the old generator and flow runner keep the running job until it ends.
        args["models"][0]["ray_actor_options"] = {"num_cpus": 0.11}
        serve.run(build_app(args), name="redeploy", route_prefix="/redeploy")
        assert before["step"] < 200, "the redeploy began while the job was running"
        done = wait_for(client, running["id"], DONE)
        assert done["status"] == "completed", done
        frames, _, _ = probe(client.get(f"/v1/videos/{running['id']}/content").content)
        assert len(frames) == 81
        after = client.post("/v1/videos", json={"prompt": "on the new replica", "num_frames": 5}).json()
        assert wait_for(client, after["id"], DONE)["status"] == "completed"
    serve.delete("redeploy")
