"""deploy/rayservice.yaml is a RayService the API server keeps whole, serving exactly configs/serve.gpu.yaml.

The manifest is checked against KubeRay's CRD (tests/data/kuberay) the way the API server reads it: a field the
schema does not declare is an error here, because the server would drop it without a word and the cluster would
quietly run without it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import load_config
from tests.support.kuberay import (
    KubeValidator,
    Schema,
    crd,
    schema_errors,
    served_storage_version,
    structural_to_jsonschema,
)

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "rayservice.yaml"
GPU_CONFIG = ROOT / "configs" / "serve.gpu.yaml"
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WAN_SERVE_WEBHOOK_SECRET", "WAN_SERVE_API_KEYS")


# --- the manifest ---------------------------------------------------------------------------------------------------


def manifest() -> Schema:
    return yaml.safe_load(MANIFEST.read_text())


def cluster(m: Schema) -> Schema:
    return m["spec"]["rayClusterConfig"]


def pod_specs(m: Schema) -> dict[str, Schema]:
    """Every pod template by group: `head` and each worker group's name."""
    c = cluster(m)
    pods = {"head": c["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in c.get("workerGroupSpecs", [])})
    return pods


def ray_container(pod: Schema) -> Schema:
    """KubeRay runs Ray in the pod's first container."""
    return pod["containers"][0]


def env_of(container: Schema) -> dict[str, Schema]:
    return {e["name"]: e for e in container.get("env", [])}


def mount_of(container: Schema, path: PurePosixPath) -> Schema | None:
    """The volume mount that holds `path`, the deepest one if several do."""
    mounts = [v for v in container.get("volumeMounts", []) if path.is_relative_to(v["mountPath"])]
    return max(mounts, key=lambda v: len(v["mountPath"]), default=None)


def cpu_cores(quantity: int | float | str) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def serve_config(m: Schema) -> Schema:
    return yaml.safe_load(m["spec"]["serveConfigV2"])


def models(m: Schema) -> list[Schema]:
    return [model for app in serve_config(m)["applications"] for model in app["args"]["models"]]


# --- schema -----------------------------------------------------------------------------------------------------------


def test_manifest_validates_against_the_kuberay_crd() -> None:
    m = manifest()
    version = served_storage_version(crd())
    assert m["apiVersion"] == f"{crd()['spec']['group']}/{version['name']}" == "ray.io/v1"
    assert m["kind"] == crd()["spec"]["names"]["kind"]
    errors = schema_errors(m)
    assert not errors, "deploy/rayservice.yaml does not fit the RayService CRD:\n" + "\n".join(errors)


def _set(path: str, value: Any) -> Callable[[Schema], None]:
    """A mutation that sets spec.<path> (dots; a number indexes a list)."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]

    def mutate(m: Schema) -> None:
        node = m["spec"]
        for p in parents:
            node = node[p]
        node[last] = value

    return mutate


def _rename(path: str, new: str) -> Callable[[Schema], None]:
    *parents, old = path.split(".")

    def mutate(m: Schema) -> None:
        node = m["spec"]
        for p in parents:
            node = node[int(p) if p.isdigit() else p]
        node[new] = node.pop(old)

    return mutate


def _duplicate_env(m: Schema) -> None:
    env = m["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env.append(copy.deepcopy(env[0]))


HEAD_CONTAINER = "rayClusterConfig.headGroupSpec.template.spec.containers.0"
WORKER = "rayClusterConfig.workerGroupSpecs.0"


@pytest.mark.parametrize(
    ("mutate", "where", "message"),
    [
        (_rename("rayClusterConfig.headGroupSpec.rayStartParams", "rayStartParam"),
         "spec.rayClusterConfig.headGroupSpec", "'rayStartParam' was unexpected"),
        (_rename(f"{HEAD_CONTAINER}.volumeMounts", "volumeMount"),
         f"spec.{HEAD_CONTAINER}", "'volumeMount' was unexpected"),
        (_set("upgradeStrategy.typo", "NewCluster"), "spec.upgradeStrategy", "'typo' was unexpected"),
        (_set(f"{WORKER}.minReplicas", "6"), f"spec.{WORKER}.minReplicas", "'6' is not of type 'integer'"),
        (_set("rayClusterConfig.headGroupSpec.rayStartParams.num-gpus", 0),
         "spec.rayClusterConfig.headGroupSpec.rayStartParams.num-gpus", "0 is not of type 'string'"),
        (_set(f"{WORKER}.maxReplicas", 2**31), f"spec.{WORKER}.maxReplicas", "is greater than the maximum"),
        (_set(f"{HEAD_CONTAINER}.resources.limits.memory", ["32Gi"]),
         f"spec.{HEAD_CONTAINER}.resources.limits.memory", "is not valid under any of the given schemas"),
        (_duplicate_env, f"spec.{HEAD_CONTAINER}.env", "duplicate entry for ['name']"),
    ],
    ids=["misspelt-rayStartParams", "misspelt-volumeMounts", "unknown-field", "string-for-int", "int-for-string",
         "int32-overflow", "list-for-quantity", "duplicate-env"],
)
def test_schema_check_rejects_a_broken_manifest(mutate: Callable[[Schema], None], where: str, message: str) -> None:
    """The check bites: each copy differs from the real manifest in one field, and that field is reported."""
    m = manifest()
    mutate(m)
    errors = schema_errors(m)
    assert any(e.startswith(f"{where}: ") and message in e for e in errors), errors


def test_schema_check_accepts_what_the_server_accepts() -> None:
    """Quantities are int-or-string, and a map-valued field keeps keys the schema does not name."""
    m = manifest()
    _set(f"{HEAD_CONTAINER}.resources.limits.cpu", 8)(m)
    _set("rayClusterConfig.headGroupSpec.rayStartParams.metrics-export-port", "8080")(m)
    assert schema_errors(m) == []


def test_preserve_unknown_fields_keeps_undeclared_keys() -> None:
    """The CRD has no such node today; a future one must not turn a free-form field into errors."""
    schema = structural_to_jsonschema({
        "type": "object",
        "properties": {
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "strict": {"type": "object", "properties": {"known": {"type": "string"}}},
        },
    })
    check = KubeValidator(schema)
    assert check.is_valid({"free": {"anything": {"nested": 1}}, "strict": {"known": "x"}})
    assert not check.is_valid({"strict": {"unknown": "x"}})


# --- serveConfigV2 ----------------------------------------------------------------------------------------------------


def test_serve_config_is_configs_serve_gpu_yaml() -> None:
    """One source of truth: the manifest embeds the repository's GPU config, so the two cannot drift apart."""
    assert serve_config(manifest()) == yaml.safe_load(GPU_CONFIG.read_text())


def test_serve_config_validates_with_ray_and_with_the_app() -> None:
    config = serve_config(manifest())
    ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        assert app["import_path"] == "serve_app.app:build_app"
        load_config(app["args"])


# --- the cluster around it ----------------------------------------------------------------------------------------


def test_the_head_keeps_the_job_database_and_outputs_on_a_claim_of_its_own() -> None:
    """The JobTracker and the Uploader, their only users, are pinned to the head: the paths the config names
    resolve, against the head's working directory, onto a writable claim that no worker mounts (ReadWriteOnce)."""
    m = manifest()
    args = serve_config(m)["applications"][0]["args"]
    config_paths = [args.get("job_db", "data/jobs.db"), args.get("storage", {}).get("root", "data/outputs")]
    pods = pod_specs(m)
    assert len(pods) >= 2, "a head and at least one worker group"
    head = ray_container(pods["head"])
    volumes = {v["name"]: v for v in pods["head"].get("volumes", [])}
    claims = set()
    for relative in config_paths:
        path = PurePosixPath(head.get("workingDir", "/")) / relative
        mount = mount_of(head, path)
        assert mount is not None, f"head: {path} is on no volume"
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        assert claim is not None, f"head: {path} is not on a PersistentVolumeClaim"
        assert not mount.get("readOnly"), f"head: {path} is read-only"
        claims.add(claim["claimName"])
    for group, pod in pods.items():
        mounted = {v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                   if "persistentVolumeClaim" in v}
        assert group == "head" or not claims & mounted, f"{group} mounts the head's data claim {claims & mounted}"


def test_gpu_workers_request_gpus_and_can_hold_every_replica() -> None:
    """The head takes no GPU; the GPU group can grow to every generator at max_replicas, each fitting one pod."""
    m = manifest()
    c = cluster(m)
    head = ray_container(c["headGroupSpec"]["template"]["spec"])
    assert c["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    assert c["enableInTreeAutoscaling"] is True

    gpu_groups = [g for g in c["workerGroupSpecs"]
                  if int(ray_container(g["template"]["spec"])["resources"].get("limits", {}).get("nvidia.com/gpu", 0))]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    capacity = 0.0
    for g in gpu_groups:
        resources = ray_container(g["template"]["spec"])["resources"]
        gpus = int(resources["limits"]["nvidia.com/gpu"])
        assert int(resources.get("requests", {}).get("nvidia.com/gpu", gpus)) == gpus
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        capacity += gpus * g["maxReplicas"]
        for model in models(m):
            options = model.get("ray_actor_options", {})
            assert options.get("num_gpus", 0) <= gpus, model["name"]
            assert options.get("num_cpus", 1) <= cpu_cores(resources["limits"]["cpu"]), model["name"]

    def most(model: Schema) -> int:
        scaling = model.get("autoscaling_config")
        return scaling["max_replicas"] if scaling else model.get("num_replicas", 1)

    def least(model: Schema) -> int:
        scaling = model.get("autoscaling_config")
        return scaling.get("min_replicas", 1) if scaling else model.get("num_replicas", 1)

    def gpus(model: Schema) -> float:
        return model.get("ray_actor_options", {}).get("num_gpus", 0)

    demand = sum(gpus(model) * most(model) for model in models(m))
    assert demand <= capacity, f"generators at max_replicas need {demand} GPUs; the worker groups reach {capacity}"
    floor = sum(gpus(model) * least(model) for model in models(m))
    assert sum(g["minReplicas"] for g in gpu_groups) == math.ceil(floor), "the workers kept are what min_replicas use"
    # The sums count fractional replicas packed onto shared cards, which Serve does only when told to.
    if any(0 < gpus(model) < 1 for model in models(m)):
        env = {e["name"]: e.get("value") for e in head.get("env", [])}
        assert env.get("RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY") == "1", "the Serve controller spreads by default"


def test_every_ray_pod_gets_the_s3_webhook_and_api_key_secrets() -> None:
    """The Gateway and FlowRunner (presigned URLs), the Notifier and the app builder (which reads the API keys)
    may run on any node; and the served config refuses to start without a key."""
    assert serve_config(manifest())["applications"][0]["args"]["auth"]["required"] is True
    for group, pod in pod_specs(manifest()).items():
        env = env_of(ray_container(pod))
        for name in SECRET_ENV:
            assert name in env, f"{group}: {name} is not set"
            ref = env[name].get("valueFrom", {}).get("secretKeyRef")
            assert ref and ref["key"] == name, f"{group}: {name} must come from a Secret, not the manifest"


def test_gpu_workers_load_weights_offline_from_a_cache_volume() -> None:
    c = cluster(manifest())
    for g in c["workerGroupSpecs"]:
        container = ray_container(g["template"]["spec"])
        env = env_of(container)
        assert env["HF_HUB_OFFLINE"]["value"] == "1", g["groupName"]
        hf_home = PurePosixPath(env["HF_HOME"]["value"])
        mount = mount_of(container, hf_home)
        assert mount is not None, f"{g['groupName']}: HF_HOME {hf_home} is on no volume"
        volume = next(v for v in g["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        assert "persistentVolumeClaim" in volume, "the weights cache must outlive the pod"


def test_head_serves_the_configs_port_with_the_tested_ray() -> None:
    m = manifest()
    c = cluster(m)
    head = ray_container(c["headGroupSpec"]["template"]["spec"])
    ports = {p.get("name"): p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == serve_config(m)["http_options"]["port"]
    assert {ports["gcs-server"], ports["dashboard"]} == {6379, 8265}
    assert c["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert c["rayVersion"] == ray.__version__, "the image's Ray must be the Ray this repository is tested with"
    images = {ray_container(pod)["image"] for pod in pod_specs(m).values()}
    assert len(images) == 1, f"head and workers must run one image, got {images}"
    # Still in the schema but ignored by KubeRay since v1.1 (ray-project/kuberay#1685): setting them would be a
    # timeout that does nothing.
    ignored = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"} & set(m["spec"])
    assert not ignored, f"{ignored}: KubeRay ignores these; see the manifest's header"
