"""The app config is one typed schema, validated at startup with messages that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve._private.build_app import build_app as build_serve_app

from serve_app.app import ConfigError, build_app, generator_options, load_config
from serve_app.config import ModelConfig, generator_name
from tests.support.app import app_args

CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    for app in yaml.safe_load(path.read_text())["applications"]:
        assert app["import_path"] == "serve_app.app:build_app"
        config = load_config(app["args"])
        assert Path(config.job_db).is_absolute() and Path(config.storage.root).is_absolute()


def test_embedded_default_serves_every_tiny_family_on_cpu() -> None:
    app = yaml.safe_load(Path("configs/serve.yaml").read_text())["applications"][0]
    config = load_config(app["args"])
    assert {m.name for m in config.models} == {"tiny-t2v", "tiny-i2v", "tiny-flf2v", "tiny-vace", "tiny-ti2v",
                                               "tiny-a14b", "tiny-i2v-a14b", "tiny-animate"}
    assert all(m.ray_actor_options.get("num_gpus", 0) == 0 for m in config.models)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"models": []}, "at least 1"),
        ({"models": [{"name": "Wan9-T2V"}]}, "unknown Wan variant"),
        ({"models": [{"name": "tiny-t2v", "default_for": ["i2v"]}]}, "cannot be the default for i2v"),
        ({"models": [{"name": "tiny-t2v", "autoscaling_config": {"min_replica": 1}}]}, "min_replica"),
        ({"models": [{"name": "tiny-t2v", "num_replicas": 2, "autoscaling_config": {"max_replicas": 2}}]},
         "not both"),
        ({"models": [{"name": "tiny-t2v"}, {"name": "tiny-t2v"}]}, "listed once"),
        ({"models": [{"name": "tiny-t2v", "gpu_fraction": 0.5}]}, "gpu_fraction"),
        ({"models": [{"name": "Wan2.1-T2V-14B", "dtype": "float16"}]}, "dtype"),  # UMT5 overflows in float16
        ({"models": [{"name": "tiny-t2v", "defaults": {"guidance_scale_2": 3.0}}]}, "one expert"),
        ({"models": [{"name": "tiny-t2v", "defaults": {"steps": 30}}]}, "steps"),
    ],
)
def test_bad_config_fails_at_startup_with_a_clear_message(args: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(args)


def test_generator_placement_follows_the_model_config() -> None:
    m = ModelConfig(name="Wan2.1-T2V-1.3B", ray_actor_options={"num_gpus": 0.5},
                    autoscaling_config={"min_replicas": 1, "max_replicas": 4})
    options = generator_options(m)
    assert options["name"] == generator_name(m.name) == "Generator-Wan2_1-T2V-1_3B"
    assert options["max_ongoing_requests"] == 1
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
    assert options["graceful_shutdown_timeout_s"] >= 600
    assert m.memory_fraction == 0.5  # two replicas share a card, each capped at half of it
    assert ModelConfig(name="Wan2.1-T2V-14B", ray_actor_options={"num_gpus": 1}).memory_fraction is None


def test_every_deployment_checks_its_replicas_health_as_configured(tmp_path: Path) -> None:
    """What Serve deploys, as `serve.run` builds it: a dead replica of any stage is found within the period."""
    app = build_app(app_args(tmp_path, ["tiny-t2v", "tiny-i2v"]) | {"health_check_period_s": 2, "enhancer": {}})
    built = build_serve_app(app, name="wan")
    assert {d.name: d._deployment_config.health_check_period_s for d in built.deployments} == {
        name: 2 for name in ("Gateway", "FlowRunner", "JobTracker", "Notifier", "Uploader", "Extender", "Interpolator",
                             "VideoEncoder", "PromptEnhancer", "Generator-tiny-t2v", "Generator-tiny-i2v")}
    assert load_config(app_args(tmp_path, ["tiny-t2v"])).health_check_period_s == 10, "Serve's own default"


def test_a_generator_may_scale_to_zero() -> None:
    zero = {"min_replicas": 0, "max_replicas": 2, "downscale_delay_s": 5, "downscale_to_zero_delay_s": 60}
    m = load_config({"models": [{"name": "tiny-t2v", "autoscaling_config": zero}]}).models[0]
    assert generator_options(m)["autoscaling_config"] == zero  # initial_replicas unset: Ray starts it at min, 0
    assert m.replica_bounds == (0, 2)
    assert ModelConfig(name="tiny-t2v").replica_bounds == (1, 1)
    with pytest.raises(ConfigError, match="initial_replicas"):
        load_config({"models": [{"name": "tiny-t2v", "autoscaling_config": zero | {"initial_replicas": 3}}]})
