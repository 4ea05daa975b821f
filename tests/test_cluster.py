"""Scale-out on a local two-node Ray cluster that declares GPUs: no GPU is needed, since Ray places replicas
by logical resources and each generator takes its device from what torch sees (the CPU here).

The head node has CPUs and no GPU; two workers have one GPU each and no CPU, so generators can only run on
the workers and every CPU stage only on the head. The Serve controller packs replicas (as the RayService's
head is told to), so two 0.5-GPU replicas share one worker's card; one that asks for more than any node has
stays pending, says why, and the rest serve. These tests start Ray their own way, so conftest runs them before
the shared app starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from serve_app.app import build_app
from serve_app.config import generator_name
from tests.media import probe
from tests.s3server import free_port
from tests.support.jobs import ENDED, until, wait_for

TOO_BIG = "tiny-flf2v"  # asks for 2 GPUs: no node has them


def gpu_model(name: str, num_gpus: float, replicas: int) -> dict[str, Any]:
    return {"name": name, "num_replicas": replicas, "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": 0}}


def cluster_args(root: Path, models: list[dict[str, Any]]) -> dict[str, Any]:
    return {"job_db": str(root / "jobs.db"), "storage": {"root": str(root / "outputs")}, "models": models,
            "gateway_replicas": 2}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A head (6 CPUs, no GPU) and two one-GPU workers (no CPU) serving 2 x 0.5-GPU and 1 x 1.0-GPU generators, and
    one that asks for 2 GPUs, which no node has; yields the URL, the head's node id and the GPU nodes' ids once the
    others run."""
    assert not ray.is_initialized(), "the cluster tests must run before anything else starts Ray"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 6, "num_gpus": 0})
    workers = [cluster.add_node(num_cpus=0, num_gpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    # Pack as production does (deploy/rayservice.yaml); and explain a replica that cannot be placed after 1 s.
    controller_env = {"RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY": "1", "RAY_SERVE_SLOW_STARTUP_WARNING_S": "1",
                      "RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S": "1"}
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port},
                controller_options={"runtime_env": {"env_vars": controller_env}})
    models = [gpu_model("tiny-t2v", 0.5, 2), gpu_model("tiny-i2v", 1.0, 1), gpu_model(TOO_BIG, 2.0, 1)]
    app = build_app(cluster_args(tmp_path_factory.mktemp("cluster"), models))
    serve.run_many([serve.RunTarget(target=app, name="wan", route_prefix="/")], wait_for_applications_running=False)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            until(lambda: client.get("/health").status_code == 200, 120, "the gateway")
            until(lambda: running(client) == {"tiny-t2v": 2, "tiny-i2v": 1, TOO_BIG: 0}, 120, "the replicas that fit")
        yield {"url": url, "head": cluster.head_node.node_id, "gpus": {w.node_id for w in workers}}
    finally:
        ray.shutdown()  # Serve with it, undrained
        cluster.shutdown()


def running(client: httpx.Client) -> dict[str, int]:
    """Each model's RUNNING generator replicas, as its card says."""
    return {m["id"]: m["replicas"]["states"].get("RUNNING", 0) for m in client.get("/v1/models").json()["data"]}


def nodes_of(app: str) -> dict[str, set[str]]:
    """Each deployment of `app` and the nodes its live replicas run on."""
    nodes: dict[str, set[str]] = {}
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
        _, _, rest = actor.class_name.partition(f"ServeReplica:{app}:")
        if rest:
            nodes.setdefault(rest, set()).add(actor.node_id)
    return nodes


def test_fractional_replicas_pack_two_to_a_gpu_and_a_whole_one_takes_a_card(cluster: dict[str, Any]) -> None:
    with httpx.Client(base_url=cluster["url"], timeout=60) as client:
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["tiny-t2v"]["replicas"]["states"] == {"RUNNING": 2}
    assert cards["tiny-i2v"]["replicas"]["states"] == {"RUNNING": 1}
    assert (cards["tiny-t2v"]["gpus"], cards["tiny-t2v"]["gpu_memory_fraction"]) == (0.5, 0.5)
    assert (cards["tiny-i2v"]["gpus"], cards["tiny-i2v"]["gpu_memory_fraction"]) == (1.0, None)
    # 0.5 + 0.5 + 1.0 on two one-GPU nodes, all running: the halves share one node's card, the whole one takes
    # the other's. Spread (Serve's default) would put a half on each and leave the whole one pending.
    assert ray.cluster_resources()["GPU"] == 2
    assert ray.available_resources().get("GPU", 0) == 0
    placed = nodes_of("wan")
    halves, whole = placed[generator_name("tiny-t2v")], placed[generator_name("tiny-i2v")]
    assert len(halves) == len(whole) == 1 and halves | whole == cluster["gpus"], (halves, whole)


def test_a_replica_that_does_not_fit_stays_pending_and_says_why(cluster: dict[str, Any]) -> None:
    with httpx.Client(base_url=cluster["url"], timeout=60) as client:

        def pending() -> dict[str, Any]:
            return next(m for m in client.get("/v1/models").json()["data"] if m["id"] == TOO_BIG)["replicas"]

        until(lambda: "to be scheduled" in pending()["message"], 60, "Serve's pending-replica message")
        replicas = pending()
        assert replicas["states"] == {"STARTING": 1} and replicas["status"] != "HEALTHY"
        assert '"GPU": 2.0' in replicas["message"], replicas["message"]
        queue = next(q for q in client.get("/v1/queue").json()["data"] if q["model"] == TOO_BIG)
        assert queue["replicas"] == {"STARTING": 1}
        # The models that fit are untouched: their replicas keep both cards, and serve.
        assert running(client) == {"tiny-t2v": 2, "tiny-i2v": 1, TOO_BIG: 0}
    assert serve.status().applications["wan"].status == "DEPLOYING", "it waits for the replica that cannot start"
    assert ray.available_resources().get("GPU", 0) == 0


def test_a_job_runs_its_generator_on_the_gpu_node_and_its_stages_on_the_head(cluster: dict[str, Any]) -> None:
    with httpx.Client(base_url=cluster["url"], timeout=60) as client:
        video = client.post("/v1/videos", json={"prompt": "across nodes", "num_frames": 9, "seed": 3}).json()
        video = wait_for(client, video["id"], ENDED)
        assert video["status"] == "completed", video
        frames, fps, _ = probe(client.get(f"/v1/videos/{video['id']}/content").content)
        width, height = map(int, video["size"].split("x"))
        assert frames.shape == (9, height, width, 3) and fps == 16
        listed = [v["id"] for v in client.get("/v1/videos").json()["data"]]
        assert video["id"] in listed

    placed = nodes_of("wan")
    assert placed[generator_name("tiny-t2v")] < cluster["gpus"]
    # The job store and the storage root are the head's: their owners are pinned there.
    for deployment in ("JobTracker", "Uploader", "VideoEncoder", "Gateway"):
        assert placed[deployment] == {cluster["head"]}, (deployment, placed)
