"""diffusers' speed options on the tiny twins, without Ray: each is shown to be applied and to keep the frames.

Speed itself is measured in benchmarks/gpu_step_time.py, as ratios against a baseline in the same run.
"""

from __future__ import annotations

import numpy as np
import pytest
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from pipelines.generate import generate
from pipelines.loading import LoadedModel, load_model
from pipelines.options import CacheOptions, SpeedOptions
from pipelines.request import GenerationRequest
from pipelines.variants import Task, get_variant

STEPS = 10  # enough steps that some look alike: a cache has something to skip


def request(steps: int = STEPS) -> GenerationRequest:
    return GenerationRequest(task=Task.T2V, prompt="a red fox in snow", width=64, height=32, num_frames=9,
                             num_inference_steps=steps, guidance_scale=5.0, seed=0, flow_shift=3.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def block_evaluations(model: LoadedModel) -> list[int]:
    """A counter of the transformer blocks that really ran: their feed-forward, which a cache that skips a block
    never calls (the block's own forward is wrapped by the cache's hook, so it is always entered)."""
    count = [0]
    for module in model.pipeline.transformer.modules():
        if isinstance(module, WanTransformerBlock):
            module.ffn.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


@pytest.fixture(scope="module")
def base() -> tuple[np.ndarray, int]:
    model = load_model(get_variant("tiny-t2v"))
    count = block_evaluations(model)
    frames = generate(model, request())
    return frames, count[0]


@pytest.mark.parametrize(
    ("cache", "min_psnr"),
    [
        (CacheOptions(kind="first_block", options={"threshold": 0.2}), 35.0),
        (CacheOptions(kind="taylorseer", options={"cache_interval": 2, "disable_cache_before_step": 2}), 35.0),
    ],
    ids=["first_block", "taylorseer"],
)
def test_a_cache_skips_blocks_stays_close_and_keeps_no_state(base: tuple[np.ndarray, int],
                                                              cache: CacheOptions, min_psnr: float) -> None:
    """35 dB: differences no eye finds in a frame; the tiny twin's random weights make it a loose proxy for real
    quality, which the benchmark reports on the real architecture."""
    frames, evaluations = base
    model = load_model(get_variant("tiny-t2v"), speed=SpeedOptions(cache=cache))
    count = block_evaluations(model)
    cached = generate(model, request())
    assert count[0] < evaluations * 0.75, f"{count[0]} of {evaluations} block evaluations ran"
    assert min_psnr < psnr(cached, frames) < float("inf")
    assert np.array_equal(generate(model, request()), cached), "a second job must not reuse the first's cache"


def test_regional_compile_gives_the_same_frames(base: tuple[np.ndarray, int]) -> None:
    model = load_model(get_variant("tiny-t2v"), speed=SpeedOptions(compile=True))
    assert all(b._compiled_call_impl is not None for b in model.pipeline.transformer.blocks), \
        "every repeated block is compiled (nn.Module.compile)"
    np.testing.assert_allclose(generate(model, request()), base[0], atol=2)


def test_an_attention_backend_is_set_on_every_attention_and_keeps_the_frames(base: tuple[np.ndarray, int]) -> None:
    model = load_model(get_variant("tiny-a14b"), speed=SpeedOptions(attention_backend="_native_math"))
    for expert in (model.pipeline.transformer, model.pipeline.transformer_2):
        backends = {str(b.attn1.processor._attention_backend) for b in expert.blocks}
        assert backends == {"AttentionBackendName._NATIVE_MATH"}
    plain = load_model(get_variant("tiny-t2v"), speed=SpeedOptions(attention_backend="_native_math"))
    np.testing.assert_allclose(generate(plain, request()), base[0], atol=1)


def test_vae_tiling_and_slicing_are_switched_on_and_frames_still_decode() -> None:
    model = load_model(get_variant("tiny-t2v"), speed=SpeedOptions(vae_tiling=True, vae_slicing=True))
    assert model.pipeline.vae.use_tiling and model.pipeline.vae.use_slicing
    assert generate(model, request(steps=2)).shape == (9, 32, 64, 3)


@pytest.mark.parametrize(
    ("speed", "message"),
    [
        (SpeedOptions(attention_backend="warp_drive"), "warp_drive"),
        (SpeedOptions(cache=CacheOptions(kind="first_block", options={"treshold": 0.1})), "treshold"),
    ],
)
def test_a_bad_option_fails_at_load_with_a_clear_error(speed: SpeedOptions, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_model(get_variant("tiny-t2v"), speed=speed)
