"""LoRA adapters in pipelines/, without Ray: made offline with peft and in the Kijai / ComfyUI layout, loaded
through diffusers' loaders, fused or selectable, per expert, and off again after every job."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from pipelines.generate import generate
from pipelines.loading import LoadedModel, load_model
from pipelines.options import LoraSpec
from pipelines.request import GenerationCancelled, GenerationRequest, InvalidRequest, LoraUse, check_loras
from pipelines.tiny import build_tiny_pipeline
from pipelines.variants import Family, Task, get_variant

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
KIJAI = {"attn1": "self_attn", "attn2": "cross_attn", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}


def request(**extra: object) -> GenerationRequest:
    return GenerationRequest(task=Task.T2V, prompt="a red fox in snow", width=64, height=32, num_frames=5,
                             num_inference_steps=2, guidance_scale=5.0, seed=3, flow_shift=3.0, **extra)


def peft_lora(seed: int = 1) -> dict[str, torch.Tensor]:
    """A LoRA made with peft on the tiny transformer (random A and B, scaled up to a visible, sane effect), in the
    state-dict form `save_lora_weights` takes."""
    transformer = build_tiny_pipeline(Family.T2V).transformer
    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False))
    return {k: v * 3 for k, v in get_peft_model_state_dict(transformer).items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The peft LoRA written by the pipeline class's own `save_lora_weights`, as a folder with diffusers' file."""
    folder = tmp_path_factory.mktemp("lora")
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=peft_lora())
    return folder


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    return load_model(get_variant("tiny-t2v"))


def test_a_peft_lora_loads_from_its_file_and_its_folder_and_changes_the_output(saved: Path, base: LoadedModel) -> None:
    from_file = load_model(get_variant("tiny-t2v"), loras=[
        LoraSpec(name="made", source=str(saved / "pytorch_lora_weights.safetensors"))])
    from_folder = load_model(get_variant("tiny-t2v"), loras=[LoraSpec(name="made", source=str(saved))])
    on = request(loras=(LoraUse("made"),))
    styled = generate(from_file, on)
    assert np.array_equal(styled, generate(from_folder, on))
    assert not np.array_equal(styled, generate(base, request()))


def test_the_kijai_layout_is_converted_by_diffusers_to_the_same_adapter(tmp_path: Path) -> None:
    """The same weights in ComfyUI's keys (lora_down / lora_up, alpha 8 at rank 4: a x2 scale) and in diffusers'
    (lora_B doubled) make the same frames: diffusers' converter is what reads the file."""
    weights = peft_lora(seed=2)
    kijai: dict[str, torch.Tensor] = {}
    doubled: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        path, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)  # blocks.0.attn1.to_q, A.weight
        block, attn, proj = path.split(".", 2)[1], path.split(".")[2], path.split(".", 3)[3]
        stem = f"diffusion_model.blocks.{block}.{KIJAI[attn]}.{KIJAI[proj]}"
        kijai[f"{stem}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        kijai[f"{stem}.alpha"] = torch.tensor(8.0)
        doubled[key] = value * 2 if kind.startswith("B") else value
    save_file(kijai, tmp_path / "kijai.safetensors")
    WanPipeline.save_lora_weights(tmp_path / "diffusers", transformer_lora_layers=doubled)
    comfy = load_model(get_variant("tiny-t2v"), loras=[LoraSpec(name="k", source=str(tmp_path / "kijai.safetensors"))])
    ours = load_model(get_variant("tiny-t2v"), loras=[LoraSpec(name="k", source=str(tmp_path / "diffusers"))])
    on = request(loras=(LoraUse("k"),))
    np.testing.assert_allclose(generate(comfy, on), generate(ours, on), atol=1)


def test_fused_equals_active_and_differs_from_the_base(saved: Path, base: LoadedModel) -> None:
    spec = LoraSpec(name="made", source=str(saved), scales={"transformer": 0.7})
    fused = load_model(get_variant("tiny-t2v"), loras=[spec.model_copy(update={"fuse": True})])
    active = load_model(get_variant("tiny-t2v"), loras=[spec])
    assert fused.adapters == {} and fused.fused == ("made",)
    assert not any(isinstance(m, LoraLayer) for m in fused.pipeline.transformer.modules()), "fused: weights dropped"
    out = generate(fused, request())
    np.testing.assert_allclose(out, generate(active, request(loras=(LoraUse("made"),))), atol=1)
    assert np.abs(out.astype(int) - generate(base, request())).mean() > 0.1


def test_two_experts_take_different_adapters_at_different_scales() -> None:
    specs = [LoraSpec(name="high", source="tiny", scales={"transformer": 3.0}),
             LoraSpec(name="low", source="tiny", scales={"transformer_2": 1.0}),
             LoraSpec(name="both", source="tiny", scales={"transformer": 0.5, "transformer_2": 2.0})]
    model = load_model(get_variant("tiny-a14b"), loras=specs)
    pipe = model.pipeline
    seen: dict[str, dict[str, float]] = {}

    def record(step: int, total: int) -> bool:
        for expert in ("transformer", "transformer_2"):
            layer = next(m for m in getattr(pipe, expert).modules() if isinstance(m, LoraLayer))
            seen[expert] = {name: layer.scaling[name] for name in layer.active_adapters}
        return True

    a14b = request(guidance_scale_2=3.0)
    generate(model, a14b, record)  # nothing active: what the layers hold is off
    assert all(next(m for m in getattr(pipe, e).modules() if isinstance(m, LoraLayer)).disable_adapters
               for e in ("transformer", "transformer_2"))
    out = generate(model, replace(a14b, loras=(LoraUse("high"), LoraUse("low"), LoraUse("both", 2.0))), record)
    assert seen == {"transformer": {"high": 3.0, "both": 1.0}, "transformer_2": {"low": 1.0, "both": 4.0}}
    only_high = generate(model, replace(a14b, loras=(LoraUse("high"),)))
    assert not np.array_equal(out, only_high) and not np.array_equal(only_high, generate(model, a14b))


def test_after_a_job_with_an_adapter_the_next_is_the_base_exactly_on_every_way_out(base: LoadedModel) -> None:
    model = load_model(get_variant("tiny-t2v"), loras=[LoraSpec(name="style", source="tiny")])
    plain = generate(base, request())
    assert np.array_equal(generate(model, request()), plain), "loaded but off: exactly the base"
    styled = request(loras=(LoraUse("style"),))
    assert not np.array_equal(generate(model, styled), plain)
    assert np.array_equal(generate(model, request()), plain), "after a completed job"

    def stop(step: int, total: int) -> bool:
        return step < 1

    with pytest.raises(GenerationCancelled):
        generate(model, styled, stop)
    assert np.array_equal(generate(model, request()), plain), "after a cancelled job"

    def fail(step: int, total: int) -> bool:
        if step:
            raise RuntimeError("the replica's tracker went away")
        return True

    with pytest.raises(RuntimeError):
        generate(model, styled, fail)
    assert np.array_equal(generate(model, request()), plain), "after a failed job"


def test_sources_that_cannot_load_fail_at_load_naming_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub reads the variable once, at import: without this it asks the network, and here waits out its retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"'lightning'.*lightx2v/Wan2\.2-Lightning"):
        load_model(get_variant("tiny-t2v"), loras=[LoraSpec(name="lightning", source="lightx2v/Wan2.2-Lightning",
                                                            weight_name="high_noise_model.safetensors")])
    with pytest.raises(ValueError, match="no transformer_2"):
        load_model(get_variant("tiny-t2v"), loras=[LoraSpec(name="x", source="tiny", scales={"transformer_2": 1})])


def test_a_job_asking_for_an_adapter_the_model_lacks_is_refused_by_name() -> None:
    adapters = {"style": LoraSpec(name="style", source="tiny")}
    with pytest.raises(InvalidRequest) as raised:
        check_loras("tiny-t2v", adapters, [LoraUse("nope")])
    assert (raised.value.param, raised.value.code) == ("loras[0].name", "unknown_adapter")
    check_loras("tiny-t2v", adapters, [LoraUse("style", 0.5)])
