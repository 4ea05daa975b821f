"""The router in-process, without Ray or HTTP: classification, resolution, checks and plans, in milliseconds.

Bad input is an `InvalidRequest` naming the field; `serve_app/errors.py` maps it to OpenAI's error shape.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from deployments.plan import Encode, Extend, Generate, Interpolate, Notify, Upload
from domain.errors import QueueFull
from pipelines.conditioning import GRAY
from pipelines.request import InvalidRequest
from pipelines.variants import CATALOG, WAN_NEGATIVE_PROMPT, Task
from serve_app.config import AppConfig, ModelConfig
from serve_app.errors import as_api_error
from serve_app.router import Fields, Media, route, route_batch
from serve_app.schemas import VideoCreateRequest

ALL = ["tiny-t2v", "tiny-i2v", "tiny-flf2v", "tiny-vace", "tiny-ti2v", "tiny-a14b"]
IMAGE = np.zeros((32, 64, 3), np.uint8)
CLIP = np.zeros((9, 32, 64, 3), np.uint8)


def config(models: list[str] = ALL, **extra: Any) -> AppConfig:
    return AppConfig.model_validate({"models": [{"name": m} for m in models], **extra})


def plan_of(fields: Fields, media: Media | None = None, models: list[str] = ALL, **extra: Any):
    return route(config(models, **extra), fields, media or Media(), "video_test")


def invalid(fields: Fields, media: Media | None = None, models: list[str] = ALL) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        plan_of(fields, media, models)
    return raised.value


@pytest.mark.parametrize(
    ("fields", "media", "model", "task"),
    [
        (Fields(prompt="x"), Media(), "tiny-t2v", Task.T2V),
        (Fields(prompt="x", num_frames=1), Media(), "tiny-t2v", Task.T2I),
        (Fields(prompt="x"), Media(image=IMAGE), "tiny-i2v", Task.I2V),
        (Fields(prompt="x"), Media(image=IMAGE, last_image=IMAGE), "tiny-flf2v", Task.FLF2V),
        (Fields(prompt="x"), Media(last_image=IMAGE), "tiny-vace", Task.VACE),
        (Fields(prompt="x"), Media(video=CLIP), "tiny-t2v", Task.V2V),
        (Fields(prompt="x"), Media(video=CLIP, mask=CLIP), "tiny-vace", Task.VACE),
        (Fields(prompt="x", edit_mode="outpaint"), Media(video=CLIP), "tiny-vace", Task.VACE),
        (Fields(prompt="x", model="tiny-vace"), Media(image=IMAGE), "tiny-vace", Task.VACE),
        (Fields(prompt="x", model="tiny-ti2v"), Media(image=IMAGE), "tiny-ti2v", Task.I2V),
        (Fields(prompt="x", reference_mode="end"), Media(image=IMAGE), "tiny-vace", Task.VACE),
        (Fields(prompt="x", task=Task.T2V, model="tiny-a14b"), Media(), "tiny-a14b", Task.T2V),
    ],
)
def test_classification(fields: Fields, media: Media, model: str, task: Task) -> None:
    routed = plan_of(fields, media)
    assert (routed.variant.name, routed.plan.task) == (model, task.value)
    assert routed.inputs.requests[0].task is task


def test_keyframes_fall_back_to_vace_when_no_flf2v_model_is_served() -> None:
    routed = plan_of(Fields(prompt="x"), Media(image=IMAGE, last_image=IMAGE), ["tiny-t2v", "tiny-vace"])
    assert (routed.variant.name, routed.plan.task) == ("tiny-vace", "vace")


@pytest.mark.parametrize(
    ("fields", "media", "param", "code"),
    [
        (Fields(prompt="x", model="sora-2"), None, "model", "model_not_found"),
        (Fields(prompt="x", model="tiny-i2v"), None, "input_reference", "missing_input"),
        (Fields(prompt="x", model="tiny-t2v", task=Task.FLF2V), None, "model", "unsupported_task"),
        (Fields(prompt="x", model="tiny-t2v"), Media(image=IMAGE), "model", "unsupported_task"),
        (Fields(prompt="x", size="65x32"), None, "size", "invalid_value"),
        (Fields(prompt="x", size="1296x736"), None, "size", "invalid_value"),
        (Fields(prompt="x", size="big"), None, "size", "invalid_size"),
        (Fields(prompt="x", num_frames=85), None, "num_frames", "invalid_value"),
        (Fields(prompt="x", num_frames=10), None, "num_frames", "invalid_value"),
        (Fields(prompt="x", seconds=12), None, "seconds", "invalid_value"),
        (Fields(prompt="x", guidance_scale_2=2.0), None, "guidance_scale_2", "invalid_value"),
        (Fields(prompt="x", flow_shift=0), None, "flow_shift", "invalid_value"),
        (Fields(prompt="x", task=Task.T2I, num_frames=1, extensions=2), None, "extensions", "invalid_value"),
        (Fields(prompt="x", reference_mode="none"), Media(image=IMAGE), "reference_mode", "invalid_value"),
        (Fields(prompt="x", reference_mode="both"), Media(image=IMAGE), "reference_mode", "invalid_value"),
        (Fields(prompt="x", denoise_strength=0.5, reference_strength=0.2), None, "reference_strength",
         "invalid_value"),
        (Fields(prompt="x", extensions=1, overlap_frames=9, num_frames=9), None, "overlap_frames", "invalid_value"),
        (Fields(prompt="x", extensions=99), None, "extensions", "invalid_value"),
        (Fields(prompt="x", target_fps=8), None, "target_fps", "invalid_value"),
        (Fields(prompt="x", target_fps=32, interpolation_factor=2), None, "interpolation_factor", "invalid_value"),
        (Fields(prompt="x"), Media(mask=CLIP), "mask", "invalid_value"),
        (Fields(prompt="x", extensions=1), None, "extensions", "unsupported_task"),  # no VACE or i2v served
    ],
)
def test_bad_input_names_the_field(fields: Fields, media: Media | None, param: str, code: str) -> None:
    models = ["tiny-t2v", "tiny-a14b"] if param == "extensions" and code == "unsupported_task" else ALL
    error = invalid(fields, media, models)
    assert (error.param, error.code) == (param, code), error.message
    assert error.message


def test_a_given_flow_shift_is_never_swapped_for_the_default() -> None:
    assert plan_of(Fields(prompt="x", flow_shift=7.5)).inputs.requests[0].flow_shift == 7.5
    assert plan_of(Fields(prompt="x")).inputs.requests[0].flow_shift == 3.0  # the variant's
    assert plan_of(Fields(prompt="x", guidance_scale=0)).inputs.requests[0].guidance_scale == 0


def test_seconds_map_onto_the_frame_grid_and_seeds_are_drawn_when_omitted() -> None:
    routed = plan_of(Fields(prompt="x", seconds=5))
    assert routed.params.num_frames == 81 and routed.params.seconds == "5"
    seeds = {plan_of(Fields(prompt="x")).params.seed for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)
    assert plan_of(Fields(prompt="x", seed=42)).params.seed == 42


def test_a_plain_video_plans_generate_encode_upload() -> None:
    plan = plan_of(Fields(prompt="x", num_frames=9, num_inference_steps=3)).plan
    assert [type(s) for s in plan.stages] == [Generate, Encode, Upload]
    assert plan.total_steps == 3 and plan.stages[0].params.num_frames == 9
    [video] = plan.stages[1].params.outputs
    assert (video.name, video.stop, video.fps, video.thumbnail, video.audio) == ("video", 9, 16, "thumbnail", False)
    assert plan.stages[2].params.prefix == "generations/video_test/"


def test_an_extension_plans_its_seams_and_counts_every_window_s_steps() -> None:
    routed = plan_of(Fields(prompt="x", num_frames=17, extensions=2, overlap_frames=5, num_inference_steps=4))
    plan = routed.plan
    assert [type(s) for s in plan.stages] == [Generate, Extend, Encode, Upload]
    assert plan.stages[1].params.model_dump() == {"model": "tiny-vace", "method": "vace", "window": 17,
                                                  "overlap": 5, "extensions": 2}
    seams = {o.name: (o.start, o.stop) for o in plan.stages[2].params.outputs}
    assert seams == {"initial": (0, 17), "extension_001": (17, 29), "extension_002": (29, 41), "combined": (0, 41)}
    assert plan.total_steps == 4 * 3 and routed.params.num_frames == 41


def test_an_image_to_video_extends_by_i2v_and_an_edit_follows_its_source_to_the_end() -> None:
    i2v = plan_of(Fields(prompt="x", num_frames=9, extensions=1, overlap_frames=1), Media(image=IMAGE))
    assert i2v.plan.stages[1].params.method == "i2v" and i2v.params.num_frames == 17
    long_clip = np.zeros((40, 32, 64, 3), np.uint8)
    edit = plan_of(Fields(prompt="x", num_frames=17, overlap_frames=5), Media(video=long_clip, mask=long_clip,
                                                                               video_file=b"mp4"))
    assert edit.plan.stages[1].params.extensions == 2 and edit.params.num_frames == 40, "trimmed to the source"
    assert edit.inputs.audio == b"mp4" and edit.plan.stages[2].params.outputs[-1].audio


def test_interpolation_plans_a_stage_and_a_frame_rate() -> None:
    routed = plan_of(Fields(prompt="x", num_frames=9, target_fps=32))
    assert [type(s) for s in routed.plan.stages] == [Generate, Interpolate, Encode, Upload]
    assert (routed.params.num_frames, routed.params.fps) == (17, 32)
    doubled = plan_of(Fields(prompt="x", num_frames=9, interpolation_factor=2))
    assert doubled.params.fps == 32


def test_a_webhook_and_a_session_shape_the_final_stages() -> None:
    plan = plan_of(Fields(prompt="x", session_id="sess_1", webhook_url="https://example.com/hook")).plan
    assert isinstance(plan.stages[-1], Notify) and plan.stages[-1].params.url == "https://example.com/hook"
    assert plan.stages[-2].params.prefix == "sessions/sess_1/generations/video_test/"


def test_a_batch_plans_one_png_each_and_a_zip_with_consecutive_seeds() -> None:
    routed = route_batch(config(), Fields(prompt="a", seed=10), ["a", "b", "c"], "batch_test")
    assert [r.seed for r in routed.inputs.requests] == [10, 11, 12]
    outputs = routed.plan.stages[1].params.outputs
    assert [(o.name, o.clip) for o in outputs[:3]] == [("image_000", 0), ("image_001", 1), ("image_002", 2)]
    assert outputs[3].members == ["image_000", "image_001", "image_002"]
    assert routed.plan.total_steps == 3 * 4


def test_a_batch_names_a_bad_prompt_by_its_index_and_bounds_its_size() -> None:
    with pytest.raises(InvalidRequest) as raised:
        route_batch(config(), Fields(prompt="a"), ["a", " "], "batch_test")
    assert raised.value.param == "prompts[1]"
    with pytest.raises(InvalidRequest) as raised:
        route_batch(config(limits={"max_batch_prompts": 2}), Fields(prompt="a"), ["a"] * 3, "batch_test")
    assert raised.value.param == "prompts"


def test_domain_errors_map_to_openai_errors_in_one_place() -> None:
    bad = as_api_error(InvalidRequest("size", "too big", "invalid_size"))
    assert (bad.status, bad.param, bad.code, bad.message) == (400, "size", "invalid_size", "too big")
    full = as_api_error(QueueFull("tiny-t2v has no room"))
    assert (full.status, full.code, full.headers) == (429, "queue_full", {"Retry-After": "30"})
    with pytest.raises(TypeError):
        as_api_error(RuntimeError("a bug is a 500, not a 4xx"))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("job_type", "video_slow", "job_type: 'video_slow' is not one of 'image_fast', 'image_high', 'video_fast', "
                               "'video_high', 'image_fast_enhanced', "),
    ("reference_mode", "middle", "reference_mode: 'middle' is not one of 'none', 'single', 'start', 'end' or 'both'"),
    ("resize_policy", None, "resize_policy: null is not one of 'center_crop', 'pad' or 'stretch'"),
    ("scheduler", 5, "scheduler: 5 is not one of 'unipc', 'euler' or 'dpm++'"),
    ("task", "s2v", "task: 's2v' is not one of 't2v', 't2i', 'i2v', 'flf2v', 'v2v', 'vace' or 'animate'"),
    ("task", "s" * 5000, f"task: '{'s' * 40}...' is not one of 't2v', "),  # a long value is cut short
])
def test_a_value_outside_a_fixed_set_is_named_with_the_values_taken(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        VideoCreateRequest.model_validate({"prompt": "x", field: value})
    error = as_api_error(raised.value)
    assert (error.status, error.param, error.code) == (400, field, "invalid_value")
    assert error.message.startswith(message) and len(error.message) < 300, error.message


def test_the_plan_is_json_and_reads_back_typed() -> None:
    plan = plan_of(Fields(prompt="x", num_frames=17, extensions=1, target_fps=32)).plan
    assert type(plan).model_validate(plan.model_dump()) == plan


LIGHT = [*(f"serve_app.{m}" for m in ("gateway", "router", "planner", "errors", "media", "body", "content", "config",
                                      "schemas", "query")), "domain.views", "domain.records", "domain.errors"]


def test_serve_app_modules_import_no_torch() -> None:
    """Only the app builder binds the generators; the HTTP layer and the domain stay light. One fresh interpreter
    imports them in turn, so what a module pulls in transitively counts, and the first to bring torch is named."""
    code = ("import importlib, sys\n"
            f"for m in {LIGHT!r}:\n"
            "    importlib.import_module(m)\n"
            "    if 'torch' in sys.modules:\n"
            "        print(m); break")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"{result.stdout.strip()} imports torch"


def test_the_default_negative_prompt_is_upstream_s_and_an_empty_one_means_none() -> None:
    assert plan_of(Fields(prompt="x")).inputs.requests[0].negative_prompt == WAN_NEGATIVE_PROMPT
    assert plan_of(Fields(prompt="x", negative_prompt="")).inputs.requests[0].negative_prompt == ""
    assert plan_of(Fields(prompt="x", negative_prompt="blur")).inputs.requests[0].negative_prompt == "blur"
    own = route(config(["tiny-t2v"]).model_copy(update={"models": [ModelConfig(
        name="tiny-t2v", defaults={"negative_prompt": "watermark"})]}), Fields(prompt="x"), Media(), "video_test")
    assert own.inputs.requests[0].negative_prompt == "watermark"


@pytest.mark.parametrize(("size", "shift"), [("480p", 3.0), ("480p-portrait", 3.0), ("720p", 5.0)])
def test_flow_shift_follows_the_resolution_as_upstream(size: str, shift: float) -> None:
    routed = plan_of(Fields(prompt="x", size=size), models=["Wan2.1-T2V-14B"])
    assert routed.inputs.requests[0].flow_shift == shift
    assert plan_of(Fields(prompt="x", size=size, flow_shift=7.0),
                   models=["Wan2.1-T2V-14B"]).inputs.requests[0].flow_shift == 7.0, "a value sent wins"


def test_configured_defaults_replace_the_catalog_s() -> None:
    configured = AppConfig.model_validate({"models": [{"name": "Wan2.1-T2V-14B", "defaults": {
        "flow_shift": 8.0, "num_inference_steps": 30, "guidance_scale": 6.0}}]})
    request = route(configured, Fields(prompt="x", size="480p"), Media(), "video_test").inputs.requests[0]
    assert (request.flow_shift, request.num_inference_steps, request.guidance_scale) == (8.0, 30, 6.0)
    i2v = route(AppConfig.model_validate({"models": [{"name": "Wan2.1-I2V-14B-480P"}]}), Fields(prompt="x"),
                Media(image=np.zeros((480, 832, 3), np.uint8)), "video_test")
    assert i2v.inputs.requests[0].num_inference_steps == 40, "upstream's steps for Wan 2.1 I2V"


def circle(width: int, height: int) -> np.ndarray:
    """A white circle on black in the middle of a width x height image, small enough to survive a crop."""
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 8, (255, 255, 255), -1)
    return image


def roundness(image: np.ndarray) -> float:
    """Width over height of the white shape: 1 for a circle, far from 1 for a squashed one."""
    ys, xs = np.nonzero(image[..., 0] > 127)
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


@pytest.mark.parametrize(("width", "height"), [(480, 720), (1280, 544)])  # a portrait and a wide photo
def test_without_a_size_the_output_takes_the_image_s_aspect_ratio(width: int, height: int) -> None:
    served = ["Wan2.1-I2V-14B-720P"]
    routed = plan_of(Fields(prompt="x"), Media(image=circle(width, height)), models=served)
    w, h = map(int, routed.params.size.split("x"))
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 1280 * 720
    assert w * h > 0.9 * 1280 * 720, "as large as the model's largest preset allows"
    assert abs(w / h - width / height) < 0.03, (w, h)
    request = routed.inputs.requests[0]
    assert request.image.shape == (h, w, 3) and abs(roundness(request.image) - 1) < 0.05
    assert routed.params.resize_policy == "center_crop"


@pytest.mark.parametrize(("policy", "round_"), [("center_crop", True), ("pad", True), ("stretch", False)])
def test_with_a_size_a_resize_policy_fits_keyframes_and_references(policy: str, round_: bool) -> None:
    portrait = circle(480, 720)
    fields = Fields(prompt="x", size="720p", resize_policy=policy)
    flf = plan_of(fields, Media(image=portrait, last_image=portrait), models=["Wan2.1-FLF2V-14B-720P"])
    vace = plan_of(fields, Media(last_image=portrait, reference_image=portrait), models=["Wan2.1-VACE-14B"])
    fitted = [flf.inputs.requests[0].image, flf.inputs.requests[0].last_image,
              vace.inputs.requests[0].last_image, vace.inputs.requests[0].reference_images[0]]
    for image in fitted:
        assert image.shape == (720, 1280, 3)
        assert (abs(roundness(image) - 1) < 0.05) == round_, (policy, roundness(image))
    if policy == "pad":
        assert (fitted[0][:, :100] == GRAY).all(), "the sides are padded, not filled with the image"
    assert flf.params.resize_policy == vace.params.resize_policy == policy
    assert plan_of(Fields(prompt="x")).params.resize_policy is None, "no image, no policy"


def test_an_overlap_as_long_as_the_window_over_a_source_clip_is_a_400_not_a_crash() -> None:
    """With an uploaded clip longer than one window, the windows must move on: the overlap is checked before
    the number of windows is worked out from it (once a division by zero, a 500)."""
    clip = np.zeros((40, 32, 64, 3), np.uint8)
    error = invalid(Fields(prompt="x", num_frames=17, overlap_frames=17), Media(video=clip, mask=clip))
    assert (error.param, error.code) == ("overlap_frames", "invalid_value")


TWINS = [name for name, v in CATALOG.items() if v.tiny]


@pytest.mark.parametrize("name", TWINS)
def test_tiny_twins_take_their_real_variants_sizes_and_stay_tiny_by_default(name: str) -> None:
    """A newcomer's first request at a real size works on the embedded default; without one, `tiny` still."""
    twin = CATALOG[name]
    real = {k: v for r in CATALOG.values() if r.family is twin.family and not r.tiny for k, v in r.sizes.items()}
    presets = {k: v for k, v in twin.sizes.items() if not k.startswith("tiny")}
    assert presets and presets.items() <= real.items(), f"{name}: {presets} are not its real variant's presets"
    if twin.family.value == "animate":
        return  # Animate routes only with its pose and face videos (tests/test_animate.py); the sizes are checked
    needs_image = not {Task.T2V, Task.VACE} & set(twin.tasks)
    media = Media(image=IMAGE, last_image=IMAGE if Task.FLF2V in twin.tasks else None) if needs_image else Media()
    if not needs_image:
        default = route(config([name]), Fields(prompt="x", model=name, num_frames=9), media, "video_test")
        assert default.params.size == "x".join(map(str, twin.sizes["tiny"]))
    for preset, (width, height) in presets.items():
        routed = route(config([name]), Fields(prompt="x", model=name, num_frames=9, size=preset), media, "video_test")
        request = routed.inputs.requests[0]
        assert (request.width, request.height) == (width, height), (preset, routed.params.size)


def test_an_image_without_a_size_keeps_a_tiny_twin_tiny() -> None:
    """An image's aspect ratio at the default preset's area: 64x32's, not 720p's, on a tiny twin."""
    routed = route(config(["tiny-i2v"]), Fields(prompt="x"), Media(image=np.zeros((480, 832, 3), np.uint8)), "v")
    request = routed.inputs.requests[0]
    assert request.width * request.height <= 64 * 32 and request.width > request.height
