"""The app builder that `configs/*.yaml` imports: a validated AppConfig becomes the deployment graph.

    Gateway ──▶ FlowRunner ──▶ Generator-<variant> (one binding per served model)
       │            ├────────▶ Extender ──▶ Generator-<variant>
       │            ├────────▶ Interpolator, VideoEncoder (CPU)
       ├────────────┼────────▶ Uploader (local directory, then S3)
       └────────────┴────────▶ JobTracker (SQLite) ──▶ Notifier (end webhooks), Uploader (deletions)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from deployments.encoder import VideoEncoder
from deployments.enhancer import PromptEnhancer
from deployments.extender import Extender
from deployments.flow import FlowRunner
from deployments.generator import WanGenerator
from deployments.interpolator import Interpolator
from deployments.jobs import JobTracker
from deployments.notifier import Notifier
from deployments.uploader import Uploader
from serve_app.config import AppConfig, ModelConfig, generator_name
from serve_app.gateway import GatewayIngress


class ConfigError(ValueError):
    """The app's args do not validate; the message lists every problem."""


def load_config(args: dict[str, Any]) -> AppConfig:
    try:
        return AppConfig.model_validate(args).absolute(Path.cwd())
    except ValidationError as exc:
        raise ConfigError(f"invalid wan-serve config:\n{exc}") from None


def generator_options(m: ModelConfig) -> dict[str, Any]:
    """Ray Serve options for one variant's generator: placement, scaling and shutdown."""
    options: dict[str, Any] = dict(
        name=generator_name(m.name),
        ray_actor_options=m.ray_actor_options,
        # One job per replica: a diffusers pipeline is not thread-safe, and a job waiting for a busy replica stays in
        # the caller's router, so whichever replica frees first takes it (a replica holding the next job would keep it
        # behind a long one while another replica sits idle).
        max_ongoing_requests=1,
        graceful_shutdown_timeout_s=m.graceful_shutdown_timeout_s,
    )
    if m.autoscaling_config is not None:
        options["autoscaling_config"] = m.autoscaling_config
    else:
        options["num_replicas"] = m.num_replicas or 1
    return options


def build_app(args: dict[str, Any]) -> Application:
    config = load_config(args)
    keys = config.auth.keys()
    if keys.open and config.auth.required:
        raise ConfigError(f"auth.required is set and no API key is configured (auth.api_keys, {config.auth.keys_env})")
    storage, hooks = config.storage, config.webhooks
    # Serve learns that a replica died from its health check alone: the check's period bounds how long one is missed.
    health = {"health_check_period_s": config.health_check_period_s}
    uploader = Uploader.options(**health).bind(storage.root, storage.s3)
    notifier = Notifier.options(**health).bind(hooks.signing_secret(), hooks.max_attempts, hooks.backoff_s,
                                               hooks.timeout_s, hooks.private_allowed())
    tracker = JobTracker.options(**health).bind(config.job_db, uploader, config.retention.days,
                                                config.retention.sweep_interval_s, notifier=notifier, s3=storage.s3,
                                                public_url=config.public_url, sweep_interval_s=config.orphan_sweep_s)
    generators = {
        m.name: WanGenerator.options(**generator_options(m), **health).bind(
            model=m.name, tracker=tracker, weights=m.weights, dtype=m.dtype, device=m.device,
            gpu_memory_fraction=m.memory_fraction, cpu_offload=m.cpu_offload, loras=m.loras, speed=m.speed,
        )
        for m in config.models
    }
    # Runners wait on generations: on a redeploy, the old replicas must outlive the longest one.
    drain = {"graceful_shutdown_timeout_s": max(m.graceful_shutdown_timeout_s for m in config.models)} | health
    stages = {
        "extend": Extender.options(**drain).bind(generators),
        "interpolate": Interpolator.options(num_replicas=config.interpolator_replicas, **health).bind(),
        "encode": VideoEncoder.options(num_replicas=config.encoder_replicas, **health).bind(),
        "upload": uploader,
    }
    if (e := config.enhancer) is not None:
        enhancer = PromptEnhancer.options(num_replicas=e.num_replicas, ray_actor_options=e.ray_actor_options, **health)
        stages["enhance"] = enhancer.bind(e.model, e.max_new_tokens, config.limits.max_prompt_chars, e.device)
    flow = FlowRunner.options(**drain).bind(generators, stages, tracker)
    gateway = GatewayIngress.options(num_replicas=config.gateway_replicas,
                                     max_ongoing_requests=config.gateway_max_ongoing_requests, **health)
    return gateway.bind(config, tracker, flow, uploader, keys, stages.get("enhance"))
