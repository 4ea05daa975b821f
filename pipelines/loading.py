"""Loading a variant's pipeline once: from a local directory, a hub id, or the offline tiny builder.

A replica holds one `LoadedModel`; tasks that need a different diffusers pipeline class over the same
weights (TI2V's image-to-video, T2V's video-to-video) get a view that shares every module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import cpu_offload_with_hook
from diffusers import (
    DiffusionPipeline,
    WanImageToVideoPipeline,
    WanVideoToVideoPipeline,
)

from pipelines.lora import load_adapters
from pipelines.options import LoraSpec, SpeedOptions
from pipelines.speed import apply_speed
from pipelines.tiny import build_tiny_pipeline
from pipelines.variants import Family, Task, Variant

log = logging.getLogger(__name__)

TINY = "tiny"
Offload = Literal[False, True, "text_encoder", "group"]
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}  # no float16: UMT5 overflows in it


@dataclass
class LoadedModel:
    """A variant's pipeline on its device, plus lazily built per-task views over the same modules."""

    variant: Variant
    pipeline: DiffusionPipeline
    device: torch.device
    scheduler_config: Any = field(default=None, repr=False)  # the checkpoint's, which each job's scheduler starts from
    adapters: dict[str, LoraSpec] = field(default_factory=dict)  # the selectable ones, by name
    fused: tuple[str, ...] = ()
    offload_hooks: list[Any] = field(default_factory=list, repr=False)  # accelerate's, for text_encoder offload
    _views: dict[Task, DiffusionPipeline] = field(default_factory=dict, repr=False)

    def free_offloaded(self) -> None:
        """Send offloaded models back to the CPU, as diffusers does after a completed call; every job's way out
        calls it, since a cancelled or failed call would leave them (an expert, the text encoder) on the GPU."""
        self.pipeline.maybe_free_model_hooks()
        for hook in self.offload_hooks:
            hook.offload()

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mb(self) -> float | None:
        """The most GPU memory this process held since `reset_peak_memory`; None off a GPU."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None

    def pipeline_for(self, task: Task) -> DiffusionPipeline:
        if task not in self._views:
            self._views[task] = self._build_view(task)
        return self._views[task]

    def _build_view(self, task: Task) -> DiffusionPipeline:
        p = self.pipeline
        core = dict(tokenizer=p.tokenizer, text_encoder=p.text_encoder, vae=p.vae, scheduler=p.scheduler,
                    transformer=p.transformer)
        if task is Task.V2V and self.variant.family is Family.T2V:
            view = WanVideoToVideoPipeline(**core)
        elif task is Task.I2V and self.variant.family is Family.TI2V:
            view = WanImageToVideoPipeline(**core, expand_timesteps=True)
        else:
            return p
        view.set_progress_bar_config(disable=True)
        return view


def resolve_source(variant: Variant, weights: str | None) -> str:
    """`weights` is "tiny", a local directory or a hub id; unset means the variant's own repo."""
    if weights:
        return weights
    if variant.tiny:
        return TINY
    assert variant.repo_id, variant.name
    return variant.repo_id


def load_model(
    variant: Variant,
    weights: str | None = None,
    *,
    dtype: str = "bfloat16",
    device: str | None = None,
    gpu_memory_fraction: float | None = None,
    cpu_offload: Offload = False,
    loras: Sequence[LoraSpec] = (),
    speed: SpeedOptions | None = None,
) -> LoadedModel:
    """Load `variant` once, with its adapters (fused ones fused) and speed options. The VAE stays in float32, as
    Wan's reference code decodes it.

    `cpu_offload`: True moves every model to the GPU only while it runs (diffusers' model offload: least memory,
    slowest); "group" streams the transformers' blocks to the GPU as they run (diffusers' group offload: little
    memory, close to resident speed on a card with fast host links); "text_encoder" keeps the transformer(s) and
    the VAE resident and moves only the text encoder, which runs once per job; False keeps everything on the device.
    """
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if target.type == "cuda" and target.index is None:
        # Indexed, as torch's memory cap requires (plain "cuda" raises ValueError): the current device, where
        # .to("cuda") would put the models.
        target = torch.device("cuda", torch.cuda.current_device())
    if target.type == "cuda" and gpu_memory_fraction is not None:
        # Co-located fractional-GPU replicas must not starve each other: cap this process's allocator.
        torch.cuda.set_per_process_memory_fraction(float(gpu_memory_fraction), target)
    source = resolve_source(variant, weights)
    if source == TINY:
        pipe = build_tiny_pipeline(variant.family)
    else:
        torch_dtype = DTYPES[dtype] if target.type != "cpu" else torch.float32
        log.info("loading %s from %s (%s on %s)", variant.name, source, torch_dtype, target)
        pipe = DiffusionPipeline.from_pretrained(source, dtype=component_dtypes(source, torch_dtype))
    scheduler_config = pipe.scheduler.config
    adapters = load_adapters(pipe, loras)  # on the CPU, before placement: fusing needs no GPU memory of its own
    hooks: list[Any] = []
    if cpu_offload is True and target.type == "cuda":
        pipe.enable_model_cpu_offload(device=target)
    elif cpu_offload == "group" and target.type == "cuda":
        pipe.enable_group_offload(onload_device=target, offload_type="block_level", num_blocks_per_group=1,
                                  use_stream=True)
    elif cpu_offload == "text_encoder" and target.type == "cuda":
        hooks = offload_text_encoder(pipe, target)
    else:
        pipe.to(target)
    apply_speed(pipe, speed or SpeedOptions())
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(variant=variant, pipeline=pipe, device=target, scheduler_config=scheduler_config,
                       adapters=adapters, fused=tuple(s.name for s in loras if s.fuse), offload_hooks=hooks)


def offload_text_encoder(pipe: DiffusionPipeline, device: torch.device) -> list[Any]:
    """Everything on `device` but the text encoder, which accelerate moves there when it runs; the transformers'
    hooks send it back to the CPU as they start, so the experts never share the card with it. Returns the hook
    that offloads the encoder, for a job that ends before a transformer ran."""
    _, encoder_hook = cpu_offload_with_hook(pipe.text_encoder, device)  # the encoder now waits on the CPU
    for name in ("transformer", "transformer_2"):
        if getattr(pipe, name, None) is not None:
            cpu_offload_with_hook(getattr(pipe, name), device, prev_module_hook=encoder_hook)
    for name, module in pipe.components.items():  # the hooks parked the transformers on the CPU too: not so
        if isinstance(module, torch.nn.Module) and name != "text_encoder":
            module.to(device)
    return [encoder_hook]


def component_dtypes(source: str, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Each component's dtype: `dtype`, but the VAE and the CLIP image encoder (Wan 2.1 I2V and FLF2V have one)
    in float32, as upstream Wan runs them: the decode and the image embedding lose detail in bfloat16, and both
    are small next to the transformer."""
    dtypes = {"default": dtype, "vae": torch.float32}
    if DiffusionPipeline.load_config(source).get("image_encoder", [None])[0] is not None:
        dtypes["image_encoder"] = torch.float32
    return dtypes


def save_model(model: LoadedModel, directory: str | Path) -> None:
    """Write the model in Diffusers format, loadable again with `load_model(variant, directory)`."""
    model.pipeline.save_pretrained(str(directory))
