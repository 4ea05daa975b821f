"""What a model is loaded with beyond its weights: LoRA adapters and GPU speed options.

Torch-free on purpose, like `request.py`: the app config validates these at startup without loading torch,
and the generator hands them to `pipelines.lora` and `pipelines.speed` when its replica loads the model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Expert = Literal["transformer", "transformer_2"]
Scheduler = Literal["unipc", "euler", "dpm++"]
ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TINY_LORA = "tiny"


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSpec(_Options):
    """One LoRA adapter of a model: where it comes from, which experts take it at what scale, and whether it is
    fused into the weights at load (always on, no per-step cost) or selectable per request."""

    name: str = Field(pattern=ADAPTER_NAME, description="what requests and presets call it")
    source: str = Field(description='a local .safetensors file, a local folder, a hub id, or "tiny" (seeded random '
                                    "weights for the tiny twins: noise, like them)")
    weight_name: str | None = Field(None, description="the file within a folder or hub repo")
    scales: dict[Expert, float] = Field(
        default_factory=lambda: {"transformer": 1.0},
        description="the experts it loads into and each one's scale; transformer_2 is Wan 2.2's low-noise expert")
    fuse: bool = Field(False, description="fused into the weights at load and its own weights dropped: on for every "
                                          "job at no per-step cost; else selectable per request and by presets")

    @model_validator(mode="after")
    def _some_expert(self) -> LoraSpec:
        if not self.scales:
            raise ValueError(f"adapter {self.name!r}: scales must name at least one expert")
        for expert, scale in self.scales.items():
            if not -10.0 <= scale <= 10.0:
                raise ValueError(f"adapter {self.name!r}: scale {scale} for {expert} is outside -10..10")
        return self


class LoraChoice(_Options):
    """A selectable adapter picked by a request or a preset; `scale` multiplies the scales its spec gives it."""

    name: str = Field(pattern=ADAPTER_NAME)
    scale: float = Field(1.0, ge=-10, le=10, description="1.0: the strength the model's config gives it")


CacheKind = Literal["first_block", "taylorseer"]


class CacheOptions(_Options):
    """A diffusers cache: reuse transformer block outputs across denoising steps that change little.

    first_block (First Block Cache): runs the first block each step and skips the rest when its output moved less
    than `threshold` (default 0.05; higher skips more). taylorseer (TaylorSeer): runs every block each
    `cache_interval` steps (default 5) and predicts their outputs in between by a Taylor series, after
    `disable_cache_before_step` (default 3) full steps. For many-step jobs; a 4-8-step distilled job has no step
    to spare.
    """

    kind: CacheKind
    options: dict[str, Any] = Field(default_factory=dict, description="fields of diffusers' config for `kind`, "
                                                                      "e.g. threshold for first_block")


class SpeedOptions(_Options):
    """diffusers' speed options for one model, each off by default (README: when to use each)."""

    attention_backend: str | None = Field(None, description="diffusers' attention backend: flash, _flash_3_hub, "
                                          "sage, _native_cudnn, native, ...; it must be installed on the image")
    compile: bool = Field(False, description="regional torch.compile of the transformer's repeated blocks: the first "
                                             "job pays the compile, every later step is faster")
    cache: CacheOptions | None = None
    vae_tiling: bool = Field(False, description="decode in tiles: less memory at 720p and for long videos")
    vae_slicing: bool = Field(False, description="decode a batch one item at a time")

    @model_validator(mode="after")
    def _combinable(self) -> SpeedOptions:
        if self.compile and self.cache is not None:
            raise ValueError("speed: compile and a cache do not combine (the cache's hooks decide per step, which "
                             "breaks the compiled graph); choose one")
        return self
