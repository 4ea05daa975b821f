"""pipelines/ without Ray: the catalog, every tiny twin, reproducibility, progress, cancellation,
the save_pretrained / from_pretrained round trip, and video I/O."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from pipelines.convert import RECORD, convert
from pipelines.generate import generate
from pipelines.loading import component_dtypes, load_model, offload_text_encoder, save_model
from pipelines.request import GenerationCancelled, GenerationRequest, InvalidRequest, check_request
from pipelines.variants import CATALOG, Family, Task, get_variant
from pipelines.video import MediaError, decode_image, decode_video, encode_mp4, thumbnail_webp
from tests.media import probe

REAL = [
    "Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.1-I2V-14B-480P", "Wan2.1-I2V-14B-720P", "Wan2.1-FLF2V-14B-720P",
    "Wan2.1-VACE-1.3B", "Wan2.1-VACE-14B", "Wan2.2-T2V-A14B", "Wan2.2-I2V-A14B", "Wan2.2-TI2V-5B",
]
TWIN_TASK = {"tiny-t2v": Task.T2V, "tiny-i2v": Task.I2V, "tiny-flf2v": Task.FLF2V, "tiny-vace": Task.VACE,
             "tiny-ti2v": Task.T2V, "tiny-a14b": Task.T2V, "tiny-i2v-a14b": Task.FLF2V}


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


def model(models: dict, name: str):
    if name not in models:
        models[name] = load_model(get_variant(name))
    return models[name]


def request_for(name: str, task: Task, frames: int = 9, steps: int = 3, seed: int = 7) -> GenerationRequest:
    v = get_variant(name)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    video = rng.integers(0, 256, (frames, 32, 64, 3), dtype=np.uint8)
    return GenerationRequest(
        task=task, prompt="a red fox in snow", width=64, height=32, num_frames=frames, num_inference_steps=steps,
        guidance_scale=v.guidance_scale, guidance_scale_2=v.guidance_scale_2, seed=seed, flow_shift=v.flow_shift,
        image=image if task in (Task.I2V, Task.FLF2V) else None,
        last_image=image[::-1].copy() if task is Task.FLF2V else None,
        video=video if task in (Task.V2V, Task.VACE) else None,
        mask=np.full((frames, 32, 64), 255, np.uint8) if task is Task.VACE else None,
    )


def test_catalog_has_the_real_variants_with_native_timing() -> None:
    for name in REAL:
        v = CATALOG[name]
        assert v.repo_id and v.repo_id.startswith("Wan-AI/"), name
        assert v.fps == (24 if name == "Wan2.2-TI2V-5B" else 16)
    assert CATALOG["Wan2.1-T2V-1.3B"].frames_for_seconds(5) == 81
    assert CATALOG["Wan2.2-TI2V-5B"].frames_for_seconds(5) == 121
    assert CATALOG["Wan2.2-T2V-A14B"].boundary_ratio == 0.875
    assert CATALOG["Wan2.1-T2V-14B"].sizes["720p"] == (1280, 720)
    assert CATALOG["Wan2.1-T2V-1.3B"].sizes["480p-portrait"] == (480, 832)
    assert {v.family for v in CATALOG.values() if v.tiny} == set(Family)


@pytest.mark.parametrize("name", list(TWIN_TASK))
def test_every_tiny_twin_generates_reproducibly(models: dict, name: str) -> None:
    m = model(models, name)
    req = request_for(name, TWIN_TASK[name])
    steps: list[tuple[int, int]] = []
    first = generate(m, req, lambda done, total: steps.append((done, total)) or True)
    assert first.shape == (9, 32, 64, 3) and first.dtype == np.uint8
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert np.array_equal(first, generate(m, req)), "same seed and inputs must give identical frames"
    assert not np.array_equal(first, generate(m, replace(req, seed=8)))


@pytest.mark.parametrize(("name", "task", "frames"), [("tiny-ti2v", Task.I2V, 9), ("tiny-t2v", Task.V2V, 9),
                                                      ("tiny-t2v", Task.T2I, 1), ("tiny-vace", Task.T2V, 9)])
def test_task_views_share_the_loaded_weights(models: dict, name: str, task: Task, frames: int) -> None:
    m = model(models, name)
    out = generate(m, request_for(name, task, frames=frames))
    assert out.shape == (frames, 32, 64, 3)
    assert m.pipeline_for(task).transformer is m.pipeline.transformer


def test_cancel_stops_within_a_step_before_the_vae_decode(models: dict) -> None:
    m = model(models, "tiny-t2v")
    decodes = 0
    original = m.pipeline.vae.decode

    def counting_decode(*args, **kwargs):
        nonlocal decodes
        decodes += 1
        return original(*args, **kwargs)

    m.pipeline.vae.decode = counting_decode
    try:
        seen: list[int] = []
        with pytest.raises(GenerationCancelled):
            generate(m, request_for("tiny-t2v", Task.T2V, steps=10), lambda done, total: seen.append(done) or done < 2)
        assert seen == [1, 2], "the step after the cancel must not run"
        assert decodes == 0
    finally:
        del m.pipeline.vae.decode


@pytest.mark.parametrize("outcome", ["completed", "cancelled", "failed"])
def test_offload_hooks_are_freed_in_every_way_out(models: dict, monkeypatch: pytest.MonkeyPatch,
                                                   outcome: str) -> None:
    """With CPU offload, diffusers frees its hooks (models back to the CPU) only after a call completes; a
    cancelled or failed generation must free them too, or an expert stays on the GPU for the next job."""
    m = model(models, "tiny-t2v")
    freed: list[int] = []
    monkeypatch.setattr(m.pipeline, "maybe_free_model_hooks", lambda: freed.append(1))

    def on_step(done: int, total: int) -> bool:
        if outcome == "failed":
            raise RuntimeError("CUDA out of memory")
        return outcome == "completed"

    if outcome == "completed":
        generate(m, request_for("tiny-t2v", Task.T2V, steps=2), on_step)
    else:
        with pytest.raises((GenerationCancelled, RuntimeError)):
            generate(m, request_for("tiny-t2v", Task.T2V, steps=2), on_step)
    assert freed, f"hooks not freed after a {outcome} generation"


def test_text_encoder_offload_is_wired_and_changes_no_output(models: dict) -> None:
    """On CPU the moves are no-ops, so what can be checked here is the wiring and that the hooks change nothing;
    tests/test_gpu.py checks the devices on a GPU. Each expert evicts the encoder as it starts."""
    plain = model(models, "tiny-a14b")
    hooked = load_model(get_variant("tiny-a14b"))
    hooked.offload_hooks = offload_text_encoder(hooked.pipeline, torch.device("cpu"))
    [encoder_hook] = hooked.offload_hooks
    for expert in (hooked.pipeline.transformer, hooked.pipeline.transformer_2):
        assert expert._hf_hook.prev_module_hook is encoder_hook
    req = request_for("tiny-a14b", Task.T2V)
    assert np.array_equal(generate(plain, req), generate(hooked, req))


def test_from_pretrained_round_trip_offline(models: dict, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("tiny-i2v", "tiny-a14b"):
        original = model(models, name)
        save_model(original, tmp_path / name)
        loaded = load_model(get_variant(name), str(tmp_path / name), dtype="float32")
        assert type(loaded.pipeline) is type(original.pipeline)
        req = request_for(name, TWIN_TASK[name])
        assert np.array_equal(generate(original, req), generate(loaded, req))
    # whatever dtype the rest takes on a GPU, the VAE and (Wan 2.1 I2V's) CLIP image encoder load in float32
    assert component_dtypes(str(tmp_path / "tiny-i2v"), torch.bfloat16) == {
        "default": torch.bfloat16, "vae": torch.float32, "image_encoder": torch.float32}
    assert "image_encoder" not in component_dtypes(str(tmp_path / "tiny-a14b"), torch.bfloat16), "no CLIP in 2.2"


def test_convert_writes_a_bfloat16_folder_that_loads(models: dict, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-off conversion: the transformer and text encoder in bfloat16 (half the float32 repo to read at
    every cold start), the VAE and CLIP kept in float32, the source recorded, and the result serves."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_model(model(models, "tiny-i2v"), tmp_path / "repo")  # float32 on disk, as the Wan repos are
    out = convert(str(tmp_path / "repo"), tmp_path / "bf16")
    dtypes = {}
    for path in out.glob("*/*.safetensors"):
        with safe_open(str(path), "pt") as f:
            dtypes[path.parent.name] = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    # the transformer's norms and time embedding stay float32 (diffusers' _keep_in_fp32_modules for Wan)
    assert dtypes == {"transformer": {"BF16", "F32"}, "text_encoder": {"BF16"}, "vae": {"F32"},
                      "image_encoder": {"F32"}}
    record = json.loads((out / RECORD).read_text())
    assert record == {"source": str(tmp_path / "repo"), "revision": None, "dtype": "bfloat16",
                      "float32": ["image_encoder", "vae"]}
    frames = generate(load_model(get_variant("tiny-i2v"), str(out)), request_for("tiny-i2v", Task.I2V))
    assert frames.shape == (9, 32, 64, 3)


class _CappedBeforeMoving(Exception):
    """Raised by the fake cap: load_model stops there, before anything would need a real GPU."""


@pytest.mark.parametrize(("device", "index"), [(None, 3), ("cuda", 3), ("cuda:1", 1)])
def test_gpu_memory_cap_goes_to_an_indexed_device(monkeypatch: pytest.MonkeyPatch, device: str | None,
                                                  index: int) -> None:
    """The CUDA branch on a CPU: the cap gets the fraction and an indexed device, as torch itself demands."""
    calls: list[tuple[float, int]] = []

    def set_per_process_memory_fraction(fraction: float, device: torch.device | int | None = None) -> None:
        # What torch does with its arguments before the CUDA call: a device without an index raises ValueError.
        calls.append((fraction, torch._utils._get_device_index(device, optional=False)))
        assert isinstance(fraction, float)
        raise _CappedBeforeMoving

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_per_process_memory_fraction)
    with pytest.raises(_CappedBeforeMoving):
        load_model(get_variant("tiny-t2v"), device=device, gpu_memory_fraction=0.5)
    assert calls == [(0.5, index)]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": "  "}, "prompt"),
        ({"width": 70}, "size"),
        ({"width": 1296, "height": 736}, "size"),  # past the largest preset, 720p
        ({"num_frames": 10}, "num_frames"),
        ({"num_frames": 85}, "num_frames"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale_2": 3.0}, "guidance_scale_2"),
        ({"task": Task.I2V}, "model"),
        ({"image": np.zeros((32, 64, 3), np.uint8)}, "input_reference"),
    ],
)
def test_check_request_names_the_field(change: dict, param: str) -> None:
    req = replace(request_for("tiny-t2v", Task.T2V), **change)
    with pytest.raises(InvalidRequest) as err:
        check_request(get_variant("tiny-t2v"), req)
    assert err.value.param == param


def test_mp4_has_exact_frames_size_and_fps() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (17, 32, 64, 3), dtype=np.uint8)
    data = encode_mp4(frames, fps=24)
    decoded, fps, codec = probe(data)
    assert decoded.shape == (17, 32, 64, 3)
    assert fps == 24 and codec == "h264"
    again, rate = decode_video(data)
    assert again.shape == decoded.shape and rate == 24


def test_thumbnail_is_a_256px_webp_of_the_middle_frame() -> None:
    frames = np.zeros((9, 32, 64, 3), np.uint8)
    frames[4] = 255
    img = Image.open(io.BytesIO(thumbnail_webp(frames)))
    assert img.format == "WEBP" and img.size == (256, 128)
    assert np.asarray(img.convert("RGB")).mean() > 250


def test_uploads_that_are_not_media_are_rejected() -> None:
    with pytest.raises(MediaError):
        decode_image(b"%PDF-1.4 not an image")
    with pytest.raises(MediaError):
        decode_video(b"\x00" * 1000)


def test_vace_keyframes_and_a_reference_image(models: dict) -> None:
    """VACE serves first/last-frame requests from keyframes alone, and follows a reference image."""
    base = request_for("tiny-vace", Task.VACE)
    first, last = base.video[0], base.video[-1]
    keyed = replace(base, video=None, mask=None, image=first, last_image=last)
    check_request(get_variant("tiny-vace"), keyed)
    frames = generate(model(models, "tiny-vace"), keyed)
    assert frames.shape == (9, 32, 64, 3)
    end_only = generate(model(models, "tiny-vace"), replace(keyed, image=None))
    assert not np.array_equal(frames, end_only), "the first keyframe conditions the result"
    referenced = generate(model(models, "tiny-vace"), replace(base, reference_images=[first]))
    assert referenced.shape == (9, 32, 64, 3), "the reference frame is not part of the output"
    with pytest.raises(InvalidRequest) as exc:
        check_request(get_variant("tiny-vace"), replace(keyed, video=base.video))
    assert exc.value.param == "input_reference"
