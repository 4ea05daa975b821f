"""configs/media-pipeline.yaml over HTTP: S1's first-last-frame recipe (two Lightning LoRAs fused into Wan 2.2's two
experts at 3.0 / 1.0, 8 steps, guidance 1.0 / 1.0, shift 8) and text-to-image through a selectable style LoRA."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from ray import serve

from serve_app.app import build_app
from tests.media import png, probe
from tests.support.jobs import until

APP = "media"
CONFIG = Path(__file__).parent.parent / "configs" / "media-pipeline.yaml"


@pytest.fixture(scope="module")
def media(cluster_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The shipped config as it is, in the shared cluster, with its files under a temporary directory."""
    root = tmp_path_factory.mktemp(APP)
    [app] = yaml.safe_load(CONFIG.read_text())["applications"]
    args = app["args"] | {"job_db": str(root / "jobs.db"), "storage": {"root": str(root / "outputs")}}
    serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
    with httpx.Client(base_url=f"{cluster_url}/{APP}", timeout=60) as client:
        yield client
    serve.delete(APP, _blocking=False)


def finished(client: httpx.Client, path: str) -> dict[str, Any]:
    job: dict[str, Any] = {}

    def ended() -> bool:
        job.update(client.get(path).json())
        return job["status"] in ("completed", "failed", "cancelled")

    until(ended, 120, f"{path} to end")
    assert job["status"] == "completed", job
    return job


def image(client: httpx.Client, **body: Any) -> np.ndarray:
    """A text-to-image job's PNG, decoded: lossless, so equal pixels mean equal generations."""
    r = client.post("/v1/videos", json={"prompt": "a lantern", "num_frames": 1, "seed": 11, **body})
    assert r.status_code == 200, r.text
    job = finished(client, f"/v1/videos/{r.json()['id']}")
    png_bytes = client.get(f"/v1/videos/{job['id']}/content", params={"variant": "image"}).content
    return np.asarray(Image.open(io.BytesIO(png_bytes)))


def test_models_list_their_adapters_presets_and_job_types(media: httpx.Client) -> None:
    models = media.get("/v1/models").json()
    assert "diffusers" in models["absent"]["Wan2.2-S2V-14B"]
    cards = {m["id"]: m for m in models["data"]}
    assert cards["tiny-i2v-a14b"]["adapters"] == [
        {"name": "lightning-high", "fused": True, "scales": {"transformer": 3.0}},
        {"name": "lightning-low", "fused": True, "scales": {"transformer_2": 1.0}},
    ]
    t2v = cards["tiny-t2v"]
    assert t2v["adapters"] == [{"name": "style", "fused": False, "scales": {"transformer": 1.0}}]
    assert t2v["presets"]["styled"] == {"loras": [{"name": "style", "scale": 1.0}]}
    assert t2v["job_types"] == {"image_fast": "fast", "image_high": "styled", "video_fast": "fast",
                                "video_high": "high"}


def test_first_last_frame_runs_the_s1_recipe(media: httpx.Client) -> None:
    first, last = (base64.b64encode(png(seed=s)).decode() for s in (1, 2))
    r = media.post("/v1/videos", json={"prompt": "day to night", "seconds": 1,
                                        "input_reference": f"data:image/png;base64,{first}",
                                        "last_image": f"data:image/png;base64,{last}"})
    assert r.status_code == 200, r.text
    video = finished(media, f"/v1/videos/{r.json()['id']}")
    assert (video["model"], video["task"]) == ("tiny-i2v-a14b", "flf2v")
    generate = video["plan"]["stages"][0]["params"]
    assert {k: generate[k] for k in ("num_inference_steps", "guidance_scale", "guidance_scale_2", "flow_shift")} == \
        {"num_inference_steps": 8, "guidance_scale": 1.0, "guidance_scale_2": 1.0, "flow_shift": 8.0}
    assert video["total_steps"] == 8 and video["step"] == 8
    frames, fps, _ = probe(media.get(f"/v1/videos/{video['id']}/content").content)
    assert frames.shape == (17, 32, 64, 3) and fps == 16


def test_a_per_request_adapter_changes_one_job_and_the_next_is_the_base_again(media: httpx.Client) -> None:
    base = image(media)
    styled = image(media, loras=[{"name": "style", "scale": 1.0}])
    assert not np.array_equal(base, styled)
    assert np.array_equal(image(media), base), "the adapter must be off again after its job"
    assert np.array_equal(image(media, job_type="image_high"), styled), "image_high runs the styled preset"


def test_a_job_records_its_adapters_and_multipart_takes_them_as_json(media: httpx.Client) -> None:
    loras = [{"name": "style", "scale": 0.5}]
    r = media.post("/v1/videos?dry_run=true", data={"prompt": "x", "num_frames": "5"},
                   files={"loras": (None, json.dumps(loras))})  # multipart, as the openai SDK sends
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["loras"] == loras and plan["plan"]["stages"][0]["params"]["loras"] == loras
    r = media.post("/v1/videos", json={"prompt": "x", "num_frames": 5, "loras": loras, "job_type": "video_fast"})
    video = finished(media, f"/v1/videos/{r.json()['id']}")
    assert (video["loras"], video["job_type"], video["preset"], video["num_inference_steps"]) == \
        (loras, "video_fast", "fast", 2)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"loras": [{"name": "lightning-high"}]}, "loras[0].name"),  # fused: on for every job, not selectable
        ({"loras": [{"name": "style", "scale": 99}]}, "loras.0.scale"),
        ({"loras": "not json"}, "loras"),
        ({"job_type": "video_fast_enhanced"}, "job_type"),
        ({"preset": "turbo"}, "preset"),
    ],
)
def test_bad_adapters_and_job_types_are_400s_naming_the_field(media: httpx.Client, body: dict, param: str) -> None:
    r = media.post("/v1/videos", json={"prompt": "x", "num_frames": 5, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
