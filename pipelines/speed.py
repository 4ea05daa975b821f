"""diffusers' speed options on a loaded pipeline: attention backend, regional compile, a step cache, VAE tiling.

Each is off by default (`pipelines/options.py:SpeedOptions`) and applied once, when a replica loads its model,
to every expert (`transformer`, and `transformer_2` on the A14B models).
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import DiffusionPipeline
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

from pipelines.options import CacheKind, CacheOptions, SpeedOptions

CACHES: dict[CacheKind, type] = {"first_block": FirstBlockCacheConfig, "taylorseer": TaylorSeerCacheConfig}
# TaylorSeer's own default patterns (`^blocks.*attn`, matched whole) miss Wan's `blocks.N.attn1`: predict whole blocks.
WAN_DEFAULTS: dict[CacheKind, dict[str, object]] = {"taylorseer": {"cache_identifiers": [r"blocks\.\d+"]}}


def apply_speed(pipe: DiffusionPipeline, options: SpeedOptions) -> None:
    """Apply `options` to `pipe`; a bad one raises ValueError here, at load, not in a job."""
    cache = cache_config(options.cache) if options.cache is not None else None
    for name in ("transformer", "transformer_2"):
        transformer: torch.nn.Module | None = getattr(pipe, name, None)
        if transformer is None:
            continue
        if options.attention_backend is not None:
            transformer.set_attention_backend(options.attention_backend)  # diffusers refuses unknown ones
        if cache is not None:
            transformer.enable_cache(dataclasses.replace(cache))  # a config per expert: hooks keep state on it
        if options.compile:
            transformer.compile_repeated_blocks(fullgraph=True)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if options.vae_slicing:
        pipe.vae.enable_slicing()


def cache_config(options: CacheOptions) -> object:
    """diffusers' config for `options.kind`: Wan's defaults, then `options.options` (unknown fields refused)."""
    config_class = CACHES[options.kind]
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(options.options) - fields
    if unknown:
        raise ValueError(f"cache {options.kind}: unknown options {sorted(unknown)}; known: {', '.join(sorted(fields))}")
    return config_class(**WAN_DEFAULTS.get(options.kind, {}) | options.options)
