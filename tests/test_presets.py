"""Job types, presets and per-request adapters in the router and the config, without Ray or torch.

Layers, first wins: the request's own fields, the preset its job type names, the model's defaults, the catalog.
"""

from __future__ import annotations

from typing import Any

import pytest

from deployments.plan import Generate
from pipelines.options import LoraChoice
from pipelines.request import InvalidRequest
from pipelines.variants import Task
from serve_app.app import ConfigError, load_config
from serve_app.config import AppConfig
from serve_app.router import Fields, Media, route, route_batch

TINY_LORA = {"name": "style", "source": "tiny"}
T2V = {
    "name": "tiny-t2v",
    "loras": [TINY_LORA, {"name": "detail", "source": "tiny", "scales": {"transformer": 0.5}},
              {"name": "baked", "source": "tiny", "fuse": True}],
    "presets": {"lightning": {"num_inference_steps": 2, "guidance_scale": 1.0, "flow_shift": 5.0,
                              "scheduler": "euler", "loras": [{"name": "style"}]}},
    "job_types": {"video_fast": "lightning"},
}
A14B = {"name": "tiny-a14b", "loras": [{"name": "low", "source": "tiny", "scales": {"transformer_2": 1.0}}]}


def config(*models: dict[str, Any], **extra: Any) -> AppConfig:
    return AppConfig.model_validate({"models": list(models) or [T2V, A14B], **extra})


def generate_params(fields: Fields, cfg: AppConfig | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    routed = route(cfg or config(), fields, Media(), "video_test")
    stage = next(s for s in routed.plan.stages if isinstance(s, Generate))
    return stage.params.model_dump(), routed.params


def invalid(fields: Fields, cfg: AppConfig | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        route(cfg or config(), fields, Media(), "video_test")
    return raised.value


def test_a_job_type_runs_its_models_preset_and_the_plan_shows_it() -> None:
    params, recorded = generate_params(Fields(prompt="x", model="tiny-t2v", job_type="video_fast"))
    assert params | {"preset": "lightning", "num_inference_steps": 2, "guidance_scale": 1.0, "flow_shift": 5.0,
                     "scheduler": "euler", "loras": [{"name": "style", "scale": 1.0}]} == params
    assert recorded.job_type == "video_fast" and recorded.preset == "lightning"
    assert recorded.loras == [{"name": "style", "scale": 1.0}]


def test_request_fields_win_over_the_preset() -> None:
    fields = Fields(prompt="x", model="tiny-t2v", job_type="video_fast", num_inference_steps=3, flow_shift=2.0,
                    loras=[])
    params, _ = generate_params(fields)
    assert (params["num_inference_steps"], params["flow_shift"], params["loras"]) == (3, 2.0, [])
    assert (params["guidance_scale"], params["scheduler"]) == (1.0, "euler")  # the preset's, where none was sent


def test_built_in_presets_fast_halves_the_models_steps_and_high_keeps_its_defaults() -> None:
    steps = {}
    for job_type in ("video_fast", "video_high", "image_fast", "image_high"):
        params, _ = generate_params(Fields(prompt="x", model="tiny-a14b", job_type=job_type))
        steps[job_type] = (params["preset"], params["num_inference_steps"], params["task"])
    assert steps == {"video_fast": ("fast", 2, "t2v"), "video_high": ("high", 4, "t2v"),
                     "image_fast": ("fast", 2, "t2i"), "image_high": ("high", 4, "t2i")}


def test_the_app_maps_job_types_for_models_without_their_own() -> None:
    cfg = config(T2V | {"job_types": {}}, job_types={"video_fast": "lightning", "image_fast": "fast",
                                                        "image_high": "high", "video_high": "high"})
    params, _ = generate_params(Fields(prompt="x", job_type="video_fast"), cfg)
    assert params["preset"] == "lightning"


def test_a_preset_named_directly_and_one_the_model_lacks() -> None:
    params, _ = generate_params(Fields(prompt="x", model="tiny-t2v", preset="lightning"))
    assert params["num_inference_steps"] == 2
    error = invalid(Fields(prompt="x", model="tiny-a14b", preset="lightning"))
    assert (error.param, error.code) == ("preset", "unknown_preset")
    assert invalid(Fields(prompt="x", job_type="video_fast", preset="fast")).param == "preset"


@pytest.mark.parametrize("job_type", ["image_fast_enhanced", "video_high_enhanced"])
def test_enhanced_job_types_are_refused_until_prompt_enhancement_exists(job_type: str) -> None:
    error = invalid(Fields(prompt="x", job_type=job_type))
    assert (error.param, error.code) == ("job_type", "unsupported_job_type")
    assert "prompt enhancement" in error.message


def test_image_job_types_make_one_frame_and_video_ones_more() -> None:
    params, _ = generate_params(Fields(prompt="x", model="tiny-t2v", job_type="image_fast"))
    assert (params["task"], params["num_frames"]) == (Task.T2I.value, 1)
    assert invalid(Fields(prompt="x", job_type="image_fast", seconds=2)).param == "job_type"
    assert invalid(Fields(prompt="x", job_type="video_fast", num_frames=1)).param == "job_type"
    with pytest.raises(InvalidRequest, match="makes a video"):
        route_batch(config(), Fields(prompt="x", job_type="video_high"), ["a", "b"], "batch_test")


def test_a_batch_runs_its_image_job_type() -> None:
    routed = route_batch(config(), Fields(prompt="a", model="tiny-t2v", job_type="image_fast"), ["a", "b"], "b")
    assert routed.plan.stages[0].params.num_inference_steps == 2 and routed.params.preset == "fast"
    assert [r.num_inference_steps for r in routed.inputs.requests] == [2, 2]


def test_per_request_adapters_reach_the_generation_request_with_their_scales() -> None:
    fields = Fields(prompt="x", model="tiny-t2v", loras=[LoraChoice(name="detail", scale=0.7),
                                                         LoraChoice(name="style")])
    routed = route(config(), fields, Media(), "video_test")
    assert [(u.name, u.scale) for u in routed.inputs.requests[0].loras] == [("detail", 0.7), ("style", 1.0)]


@pytest.mark.parametrize(
    ("loras", "param", "code"),
    [
        ([LoraChoice(name="nope")], "loras[0].name", "unknown_adapter"),
        ([LoraChoice(name="style"), LoraChoice(name="baked")], "loras[1].name", "unknown_adapter"),  # fused: always on
        ([LoraChoice(name="style"), LoraChoice(name="style")], "loras[1].name", "invalid_value"),
    ],
)
def test_an_adapter_the_model_cannot_select_is_a_400_naming_it(loras: list[LoraChoice], param: str,
                                                                 code: str) -> None:
    error = invalid(Fields(prompt="x", model="tiny-t2v", loras=loras))
    assert (error.param, error.code) == (param, code)


def test_an_adapter_of_another_model_is_refused() -> None:
    error = invalid(Fields(prompt="x", model="tiny-a14b", loras=[LoraChoice(name="style")]))
    assert error.param == "loras[0].name" and "tiny-a14b" in error.message


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "tiny-t2v", "loras": [{"name": "x", "source": "tiny", "scales": {"transformer_2": 1.0}}]},
         "one expert"),
        ({"name": "tiny-t2v", "loras": [TINY_LORA, TINY_LORA]}, "once"),
        ({"name": "tiny-t2v", "loras": [{"name": "x", "source": "tiny", "scales": {}}]}, "at least one expert"),
        ({"name": "tiny-t2v", "loras": [{"name": "bad name", "source": "tiny"}]}, "pattern"),
        ({"name": "tiny-t2v", "presets": {"p": {"loras": [{"name": "ghost"}]}}}, "ghost"),
        ({"name": "tiny-t2v", "loras": [TINY_LORA | {"fuse": True}], "presets": {"p": {"loras": [{"name": "style"}]}}},
         "selectable"),
        ({"name": "tiny-t2v", "presets": {"p": {"guidance_scale_2": 1.0}}}, "one expert"),
        ({"name": "tiny-t2v", "job_types": {"video_fast": "missing"}}, "unknown preset"),
        ({"name": "tiny-t2v", "presets": {"p": {"scheduler": "ddim"}}}, "scheduler"),
        ({"name": "tiny-t2v", "loras": [TINY_LORA], "speed": {"compile": True}}, "recompile"),
        ({"name": "tiny-t2v", "speed": {"cache": {"kind": "mag"}}}, "cache"),
        ({"name": "tiny-t2v", "speed": {"compile": True, "cache": {"kind": "first_block"}}}, "do not combine"),
    ],
)
def test_bad_adapter_and_preset_configs_fail_at_startup(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"models": [model]})


def test_an_app_job_type_every_model_must_have() -> None:
    with pytest.raises(ConfigError, match="does not have"):
        load_config({"models": [{"name": "tiny-t2v"}], "job_types": {"video_fast": "lightning"}})
