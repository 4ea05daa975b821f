"""LoRA adapters through diffusers' loaders: fused at load, or selectable per job, with a scale per expert.

Every replica loads every adapter its model's config lists, at start, so a request's adapters never need a
particular replica: switching is a `set_adapters` call per expert, not a load. diffusers' `load_lora_weights`
reads local files, folders and hub repos and converts the Kijai / ComfyUI, lightx2v and musubi key layouts.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from diffusers import DiffusionPipeline

from pipelines.options import TINY_LORA, Expert, LoraSpec
from pipelines.request import LoraUse

log = logging.getLogger(__name__)

EXPERTS: tuple[Expert, ...] = ("transformer", "transformer_2")
TINY_RANK = 4
TINY_STD = 0.3  # next to the twins' weights (~0.2): a visible change to their output, not a blow-up
_TINY_TARGETS = re.compile(r"blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)")


def load_adapters(pipe: DiffusionPipeline, specs: Sequence[LoraSpec]) -> dict[str, LoraSpec]:
    """Load `specs` into `pipe`: the fused ones merged into the weights (each expert at its own scale) and then
    dropped, the selectable ones loaded and left off. Returns the selectable ones by name."""
    fused = [s for s in specs if s.fuse]
    for spec in fused:
        _load(pipe, spec)
    if fused:
        for expert, module in _experts(pipe):
            mine = [s for s in fused if expert in s.scales]
            if mine:
                module.set_adapters([s.name for s in mine], [s.scales[expert] for s in mine])
                module.fuse_lora(adapter_names=[s.name for s in mine])
        pipe.unload_lora_weights()  # the merged weights stay; the adapters' own are gone
        log.info("fused LoRA adapters %s", ", ".join(f"{s.name} {s.scales}" for s in fused))
    selectable = {s.name: s for s in specs if not s.fuse}
    for spec in selectable.values():
        _load(pipe, spec)
    _disable(pipe)
    if selectable:
        log.info("loaded selectable LoRA adapters %s", ", ".join(f"{s.name} {s.scales}" for s in selectable.values()))
    return selectable


@contextmanager
def activate(pipe: DiffusionPipeline, adapters: Mapping[str, LoraSpec], uses: Sequence[LoraUse]) -> Iterator[None]:
    """Turn on `uses` for one job, each expert at `spec.scales[expert] * use.scale`, and off again on every way
    out (done, failed, cancelled), so the next job runs the base model. No uses: no peft call at all."""
    if not uses:
        yield
        return
    try:
        for expert, module in _experts(pipe):
            picked = [(u.name, adapters[u.name].scales[expert] * u.scale) for u in uses
                      if expert in adapters[u.name].scales]
            if picked:
                module.enable_lora()
                module.set_adapters([name for name, _ in picked], [scale for _, scale in picked])
        yield
    finally:
        _disable(pipe)


def tiny_lora(transformer: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """A tiny twin's adapter: seeded (by its name) random rank-4 weights on every attention projection, in
    diffusers' layout. Noise, like the twins, but a real LoRA for the real loader."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    state: dict[str, torch.Tensor] = {}
    for path, module in transformer.named_modules():
        module = getattr(module, "base_layer", module)  # a projection another adapter already wraps
        if isinstance(module, torch.nn.Linear) and _TINY_TARGETS.fullmatch(path):
            a = torch.randn(TINY_RANK, module.in_features, generator=generator) * TINY_STD
            b = torch.randn(module.out_features, TINY_RANK, generator=generator) * TINY_STD
            state[f"transformer.{path}.lora_A.weight"], state[f"transformer.{path}.lora_B.weight"] = a, b
    return state


def _load(pipe: DiffusionPipeline, spec: LoraSpec) -> None:
    """Load `spec` into each expert it names, under its name."""
    for expert in spec.scales:
        if getattr(pipe, expert, None) is None:
            raise ValueError(f"LoRA adapter {spec.name!r}: this model has no {expert} (transformer_2 is Wan 2.2's "
                             "low-noise expert, on the A14B models only)")
        source: str | dict[str, torch.Tensor] = spec.source
        if spec.source == TINY_LORA:
            source = tiny_lora(getattr(pipe, expert), spec.name)
        kwargs = {"weight_name": spec.weight_name} if spec.weight_name else {}
        try:
            pipe.load_lora_weights(source, adapter_name=spec.name, load_into_transformer_2=expert == "transformer_2",
                                   **kwargs)
        except Exception as exc:  # OSError offline, ValueError for a foreign layout, KeyError, ...: all fatal here
            raise ValueError(f"LoRA adapter {spec.name!r}: cannot load {spec.source!r}"
                             f"{f' ({spec.weight_name})' if spec.weight_name else ''}: {exc}") from exc
        if spec.name not in getattr(getattr(pipe, expert), "peft_config", {}):  # diffusers only warns
            raise ValueError(f"LoRA adapter {spec.name!r}: {spec.source!r} has no weights for this model's {expert}; "
                             "is it a LoRA of another model?")


def _experts(pipe: DiffusionPipeline) -> Iterator[tuple[Expert, torch.nn.Module]]:
    for expert in EXPERTS:
        module = getattr(pipe, expert, None)
        if module is not None:
            yield expert, module


def _disable(pipe: DiffusionPipeline) -> None:
    """The default state: selectable adapters loaded but off, so a job without `loras` is exactly the base."""
    for _, module in _experts(pipe):
        if getattr(module, "_hf_peft_config_loaded", False):
            module.disable_lora()
