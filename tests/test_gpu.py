"""On a CUDA GPU only (the `gpu` marker; skipped with the reason elsewhere): a real-size architecture with
random weights loaded through the real path at half a GPU, a 2-step job, the memory cap, the offload modes (group
offload too), and a selectable LoRA on the real-size transformer.

Speed and memory do not depend on the weights' values, so random weights at the real sizes tell what a deploy
will meet. Run with `.venv/bin/python -m pytest -m gpu -s` on a machine with a CUDA build of torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from pipelines.generate import generate
from pipelines.loading import load_model
from pipelines.options import LoraSpec
from pipelines.request import GenerationRequest, LoraUse
from pipelines.tiny import build_tokenizer
from pipelines.variants import Task, get_variant

pytestmark = pytest.mark.gpu
MODEL = "Wan2.1-T2V-1.3B"


@pytest.fixture(scope="module")
def real_size(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan2.1-T2V-1.3B's architecture (its transformer, the UMT5-XXL encoder, the Wan VAE) with random weights,
    saved as a Diffusers folder in bfloat16, the VAE in float32; built on the GPU, where random init is quick."""
    folder = tmp_path_factory.mktemp("wan13b")
    text = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu")
    with torch.device("cuda"):
        pipe = WanPipeline(
            tokenizer=build_tokenizer(),
            text_encoder=UMT5EncoderModel(text).to(torch.bfloat16),
            vae=AutoencoderKLWan(),
            transformer=WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024).to(torch.bfloat16),
            scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                              flow_shift=3.0),
        )
        pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    torch.cuda.empty_cache()
    return folder


def request(steps: int = 2) -> GenerationRequest:
    v = get_variant(MODEL)
    return GenerationRequest(task=Task.T2V, prompt="a red fox running through fresh snow", width=832, height=480,
                             num_frames=9, num_inference_steps=steps, guidance_scale=v.guidance_scale, seed=1,
                             flow_shift=v.flow_shift, negative_prompt=v.negative_prompt)


def test_half_a_gpu_caps_the_allocator_and_runs_a_job(real_size: Path) -> None:
    model = load_model(get_variant(MODEL), str(real_size), gpu_memory_fraction=0.5)
    device = model.device
    assert device.type == "cuda" and device.index is not None
    assert torch.cuda.get_per_process_memory_fraction(device) == pytest.approx(0.5)
    assert model.pipeline.vae.dtype == torch.float32 and model.pipeline.transformer.dtype == torch.bfloat16
    torch.cuda.reset_peak_memory_stats(device)
    frames = generate(model, request())
    peak = torch.cuda.max_memory_allocated(device)
    assert model.peak_memory_mb() == peak / 2**20, "what the generator reports on the job"
    total = torch.cuda.get_device_properties(device).total_memory
    print(f"\n{MODEL} random weights, 832x480, 9 frames, 2 steps: peak {peak / 2**30:.1f} GiB "
          f"of {total / 2**30:.0f} GiB (cap {total / 2**31:.0f} GiB)")
    assert frames.shape == (9, 480, 832, 3)
    assert peak <= 0.5 * total


def test_text_encoder_offload_keeps_the_transformer_resident(real_size: Path) -> None:
    model = load_model(get_variant(MODEL), str(real_size), cpu_offload="text_encoder")
    pipe = model.pipeline
    assert pipe.text_encoder.device.type == "cpu" and pipe.transformer.device.type == "cuda"
    generate(model, request())
    assert pipe.text_encoder.device.type == "cpu", "the transformer's first step sent the encoder back"
    assert pipe.transformer.device.type == "cuda" and pipe.vae.device.type == "cuda"


def test_full_offload_returns_every_model_after_a_cancel(real_size: Path) -> None:
    model = load_model(get_variant(MODEL), str(real_size), cpu_offload=True)
    with pytest.raises(Exception, match="cancelled"):
        generate(model, request(steps=4), lambda done, total: done < 1)
    pipe = model.pipeline
    assert {m.device.type for m in (pipe.text_encoder, pipe.transformer, pipe.vae)} == {"cpu"}


def test_group_offload_streams_blocks_and_uses_less_memory_than_resident(real_size: Path) -> None:
    model = load_model(get_variant(MODEL), str(real_size), cpu_offload="group")
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.reset_peak_memory_stats(device)
    frames = generate(model, request())
    grouped = torch.cuda.max_memory_allocated(device)
    assert frames.shape == (9, 480, 832, 3)
    transformer_bytes = sum(p.numel() * p.element_size() for p in model.pipeline.transformer.parameters())
    print(f"\ngroup offload: peak {grouped / 2**30:.1f} GiB; the transformer is {transformer_bytes / 2**30:.1f} GiB")
    assert grouped < transformer_bytes + 8 * 2**30, "the transformer must not be resident as a whole"


def test_a_selectable_adapter_runs_on_the_real_size_model(real_size: Path) -> None:
    """Seeded random LoRA weights ("tiny" builds them from the model's own shapes) on every attention projection."""
    model = load_model(get_variant(MODEL), str(real_size), loras=[LoraSpec(name="style", source="tiny")])
    assert generate(model, replace(request(), loras=(LoraUse("style"),))).shape == (9, 480, 832, 3)
