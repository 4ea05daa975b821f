"""Loading a variant's pipeline once: from a local directory, a hub id, or the offline tiny builder.

A replica holds one `LoadedModel`; tasks that need a different diffusers pipeline class over the same
weights (TI2V's image-to-video, T2V's video-to-video) get a view that shares every module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    WanImageToVideoPipeline,
    WanVideoToVideoPipeline,
)

from pipelines.tiny import build_tiny_pipeline
from pipelines.variants import Family, Task, Variant

log = logging.getLogger(__name__)

TINY = "tiny"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class LoadedModel:
    """A variant's pipeline on its device, plus lazily built per-task views over the same modules."""

    variant: Variant
    pipeline: DiffusionPipeline
    device: torch.device
    _views: dict[Task, DiffusionPipeline] = field(default_factory=dict, repr=False)

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
    cpu_offload: bool = False,
) -> LoadedModel:
    """Load `variant` once. The VAE stays in float32, as Wan's reference code decodes it."""
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if target.type == "cuda" and gpu_memory_fraction is not None:
        # Co-located fractional-GPU replicas must not starve each other: cap this process's allocator. torch takes
        # an indexed device here (plain "cuda" raises ValueError): "cuda" is the current device, where .to() puts it.
        index = target.index if target.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(float(gpu_memory_fraction), torch.device("cuda", index))
    source = resolve_source(variant, weights)
    if source == TINY:
        pipe = build_tiny_pipeline(variant.family)
    else:
        torch_dtype = DTYPES[dtype] if target.type != "cpu" else torch.float32
        log.info("loading %s from %s (%s on %s)", variant.name, source, torch_dtype, target)
        pipe = DiffusionPipeline.from_pretrained(source, dtype=component_dtypes(source, torch_dtype))
    if cpu_offload and target.type == "cuda":
        pipe.enable_model_cpu_offload(device=target)
    else:
        pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(variant=variant, pipeline=pipe, device=target)


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
