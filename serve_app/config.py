"""The app config: what `configs/*.yaml` passes as `args`, as one typed schema validated at startup."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from ray.serve.config import AutoscalingConfig

from deployments.storage import S3Config
from domain.records import JobType
from pipelines.options import LoraChoice, LoraSpec, Scheduler, SpeedOptions
from pipelines.request import MAX_PROMPT_CHARS
from pipelines.variants import CATALOG, Task, Variant, get_variant
from pipelines.video import MAX_IMAGE_PIXELS
from serve_app.auth import Keys
from serve_app.schemas import MAX_METADATA_KEYS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _configurable(job_type: JobType) -> JobType:
    if job_type.enhanced:
        raise ValueError(f"{job_type} runs the preset of {job_type.base}: configure that one")
    return job_type


ConfiguredJobType = Annotated[JobType, AfterValidator(_configurable)]
DEFAULT_JOB_TYPES = {t: "high" if t.value.endswith("_high") else "fast" for t in JobType if not t.enhanced}
PRESET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Sampling(_Strict):
    """How a model samples; unset fields fall through to the next layer (request > preset > model > catalog)."""

    num_inference_steps: int | None = Field(None, ge=1, le=200)
    guidance_scale: float | None = Field(None, ge=0, le=20, description="1.0 turns classifier-free guidance off "
                                                                       "(half the transformer passes)")
    guidance_scale_2: float | None = Field(None, ge=0, le=20, description="the low-noise expert's (A14B models)")
    flow_shift: float | None = Field(None, gt=0, le=50, description="at every size, replacing the catalog's "
                                                                   "480p shift too")
    scheduler: Scheduler | None = Field(None, description="unipc (Wan's own), euler (what step-distilled LoRAs "
                                                          "use) or dpm++")


class QualityDefaults(Sampling):
    """What a request leaves out, per model; unset fields keep the catalog's (upstream Wan's own defaults)."""

    negative_prompt: str | None = Field(None, description='sent when a request has none; "" sends none')


class PresetConfig(Sampling):
    """A named trade-off of quality against time: what it sets wins over the model's defaults, and a request's
    own fields win over it."""

    loras: list[LoraChoice] = Field(default_factory=list, description="selectable adapters it turns on")


def builtin_presets(variant: Variant) -> dict[str, PresetConfig]:
    """Every model's presets unless its config redefines them: `high` is the model's defaults, `fast` half their
    steps (a config gives `fast` a step-distilled LoRA where one exists)."""
    return {"high": PresetConfig(), "fast": PresetConfig(num_inference_steps=max(1, variant.steps // 2))}


class ModelConfig(_Strict):
    """One served variant: its weights and how its generator deployment is placed and scaled."""

    name: str = Field(description="a variant from the catalog, e.g. Wan2.1-T2V-1.3B or tiny-t2v")
    weights: str | None = Field(None, description='"tiny", a local Diffusers directory or a hub id; '
                                                  "unset: the variant's own repo (tiny twins: built offline)")
    dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="of the transformer and text encoder on a GPU (the VAE and CLIP stay float32); "
                                "no float16: Wan's UMT5 text encoder overflows in it")
    device: str | None = None
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    cpu_offload: bool | Literal["text_encoder", "group"] = Field(
        False, description='true: every model on the GPU only while it runs (least memory, slowest); "group": the '
                           "transformers' blocks stream to the GPU as they run (little memory, near resident speed); "
                           '"text_encoder": the transformers and VAE stay on the GPU and only the text encoder, '
                           "used once per job, is moved there when needed")
    default_for: list[Task] = Field(default_factory=list, description="tasks this model serves by default")
    num_replicas: int | None = Field(None, ge=1, description="a fixed replica count (default 1), "
                                                             "or set autoscaling_config instead")
    autoscaling_config: dict[str, Any] | None = Field(None, description="Ray Serve's AutoscalingConfig; "
                                                      "min_replicas 0 scales the model to zero while idle")
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    max_queued_jobs: int = Field(64, ge=1, description="queued + running jobs before 429")
    defaults: QualityDefaults = QualityDefaults()
    loras: list[LoraSpec] = Field(default_factory=list, description="LoRA adapters: fused at load, or selectable "
                                                                    "per request and by presets")
    presets: dict[str, PresetConfig] = Field(default_factory=dict, description="named presets, added to (or "
                                             "replacing) the built-in fast and high")
    job_types: dict[ConfiguredJobType, str] = Field(default_factory=dict, description="this model's preset per job "
                                                    "type, "
                                          "over the app's job_types")
    speed: SpeedOptions = SpeedOptions()
    graceful_shutdown_timeout_s: float = Field(600, gt=0, description="longer than one generation")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in CATALOG:
            raise ValueError(f"unknown Wan variant {name!r}; known: {', '.join(CATALOG)}")
        return name

    @field_validator("autoscaling_config")
    @classmethod
    def _autoscaling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:  # Ray's own schema, so a typo fails here and not in a replica
            unknown = set(value) - set(AutoscalingConfig.model_fields)
            if unknown:
                raise ValueError(f"unknown autoscaling_config keys {sorted(unknown)}; "
                                 f"known: {', '.join(AutoscalingConfig.model_fields)}")
            AutoscalingConfig(**value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        variant = get_variant(self.name)
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError(f"{self.name}: set num_replicas or autoscaling_config, not both")
        for task in self.default_for:
            if task not in variant.tasks:
                raise ValueError(f"{self.name} cannot be the default for {task.value}: it does "
                                 f"{', '.join(t.value for t in variant.tasks)}")
        if self.defaults.guidance_scale_2 is not None and variant.boundary_ratio is None:
            raise ValueError(f"{self.name} has one expert: defaults.guidance_scale_2 is for the A14B models")
        self._check_adapters(variant)
        return self

    def _check_adapters(self, variant: Variant) -> None:
        names = [spec.name for spec in self.loras]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: each adapter name may be used once; got {names}")
        if self.speed.compile and self.selectable:
            raise ValueError(f"{self.name}: speed.compile with selectable adapters would recompile for each new "
                             "per-request scale, and fail past torch's recompile limit: fuse them or leave compile off")
        for spec in self.loras:
            if "transformer_2" in spec.scales and variant.boundary_ratio is None:
                raise ValueError(f"{self.name} has one expert: adapter {spec.name!r} cannot load into transformer_2")
        for name, preset in self.presets.items():
            if not re.match(PRESET_NAME, name):
                raise ValueError(f"{self.name}: preset name {name!r} must match {PRESET_NAME}")
            if preset.guidance_scale_2 is not None and variant.boundary_ratio is None:
                raise ValueError(f"{self.name} has one expert: preset {name!r} cannot set guidance_scale_2")
            for choice in preset.loras:
                if choice.name not in self.selectable:
                    raise ValueError(f"{self.name}: preset {name!r} turns on {choice.name!r}, which is not one of "
                                     f"its selectable (unfused) adapters: {sorted(self.selectable)}")
        for job_type, preset_name in self.job_types.items():
            if preset_name not in self.all_presets:
                raise ValueError(f"{self.name}: job type {job_type} names an unknown preset {preset_name!r}")

    @property
    def selectable(self) -> dict[str, LoraSpec]:
        """The adapters a request or a preset may turn on, by name."""
        return {spec.name: spec for spec in self.loras if not spec.fuse}

    @property
    def all_presets(self) -> dict[str, PresetConfig]:
        return builtin_presets(self.variant) | self.presets

    @property
    def variant(self) -> Variant:
        """The catalog entry with this model's quality defaults applied: what requests are resolved against."""
        d = self.defaults
        changes = {key: value for key, value in dict(
            negative_prompt=d.negative_prompt, steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
            guidance_scale_2=d.guidance_scale_2, flow_shift=d.flow_shift, scheduler=d.scheduler).items()
            if value is not None}
        if d.flow_shift is not None:
            changes["flow_shift_480p"] = None
        return replace(get_variant(self.name), **changes)

    @property
    def replica_bounds(self) -> tuple[int, int]:
        """The fewest and most generator replicas: a fixed count, or autoscaling's bounds (Ray's defaults if unset)."""
        if self.autoscaling_config is None:
            count = self.num_replicas or 1
            return count, count
        scaling = AutoscalingConfig(**self.autoscaling_config)
        return scaling.min_replicas, scaling.max_replicas

    @property
    def num_gpus(self) -> float:
        return float(self.ray_actor_options.get("num_gpus", 0))

    @property
    def memory_fraction(self) -> float | None:
        """An explicit cap, else the GPU share the replica is placed with, so neighbours cannot starve it."""
        return self.gpu_memory_fraction or (self.num_gpus if 0 < self.num_gpus < 1 else None)


class StorageConfig(_Strict):
    root: str = Field("data/outputs", description="local directory: every asset is written here first")
    s3: S3Config | None = Field(None, description="also upload every asset to this S3-compatible bucket")


class WebhookConfig(_Strict):
    """How job webhooks are signed (Standard Webhooks, as OpenAI's) and retried."""

    secret: SecretStr | None = Field(None, description="whsec_<base64>; unset: read from secret_env")
    secret_env: str = Field("WAN_SERVE_WEBHOOK_SECRET", description="env var holding the secret")
    max_attempts: int = Field(5, ge=1, le=20)
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each attempt")
    timeout_s: float = Field(10.0, gt=0)
    allow_private_networks: bool = Field(False, description="deliver to loopback, private and link-local "
                                         "addresses too (local receivers); also WAN_SERVE_WEBHOOK_ALLOW_PRIVATE=1")

    def private_allowed(self) -> bool:
        return self.allow_private_networks or os.environ.get("WAN_SERVE_WEBHOOK_ALLOW_PRIVATE") == "1"

    def signing_secret(self) -> str | None:
        """Unsigned webhooks when neither the config nor the environment gives a secret."""
        return self.secret.get_secret_value() if self.secret else os.environ.get(self.secret_env) or None


class ExtendConfig(_Strict):
    """Long videos: windows of the request's frame count that reuse the last `overlap_frames`."""

    overlap_frames: int = Field(15, ge=1)
    max_extensions: int = Field(20, ge=0)


class MediaURLConfig(_Strict):
    """Media fields given as URLs, fetched by the service through the same address guard as webhooks."""

    enabled: bool = Field(True, description="accept https:// URLs in media fields")
    allow_http: bool = Field(False, description="accept plain http:// URLs too")
    allow_private_networks: bool = Field(False, description="fetch from loopback, private and link-local "
                                         "addresses too; also WAN_SERVE_MEDIA_ALLOW_PRIVATE=1")
    timeout_s: float = Field(20.0, gt=0, description="for the whole fetch of one URL")
    max_mb: int = Field(64, ge=1, description="a fetched file's size (read in chunks; larger is a 413)")

    def private_allowed(self) -> bool:
        return self.allow_private_networks or os.environ.get("WAN_SERVE_MEDIA_ALLOW_PRIVATE") == "1"


class LimitsConfig(_Strict):
    """Bounds on what a request may carry or cost, each checked before the work it bounds."""

    max_body_mb: int = Field(64, ge=1, description="a request body, counted as it streams in (chunked too): a 413")
    max_file_mb: int = Field(64, ge=1, description="one multipart file part, and one session upload")
    max_form_fields: int = Field(64, ge=1, description="fields and files in one multipart body")
    max_json_depth: int = Field(32, ge=2, description="nesting of a JSON body")
    max_prompt_chars: int = Field(4000, ge=1, le=MAX_PROMPT_CHARS, description="a prompt or negative prompt")
    max_metadata_keys: int = Field(16, ge=0, le=MAX_METADATA_KEYS, description="a session's metadata entries")
    max_metadata_chars: int = Field(512, ge=1, description="each metadata key and value")
    max_batch_prompts: int = Field(20, ge=1, le=100, description="prompts in one image batch")
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=64 * 64, description="an input image's width x height, "
                                  "read from its header before it is decoded (a larger one is a 422)")
    min_media_side: int = Field(16, ge=1, description="an input image's or video's shorter side")
    max_aspect_ratio: float = Field(8.0, ge=1, description="an input image's or video's long side / short side")
    max_video_pixels: int = Field(2560 * 1440, ge=64 * 64, description="an input video's frame width x height, "
                                  "read from the container before decoding")
    max_video_frames: int = Field(2000, ge=1, description="an input video's frames, as stored and once retimed "
                                  "to the model's frame rate")
    min_video_fps: float = Field(1.0, gt=0, description="an input video's frame rate")
    max_video_fps: float = Field(240.0, gt=0)
    max_video_seconds: float = Field(300.0, gt=0, description="an input video's duration")
    max_video_decoded_mb: int = Field(2048, ge=1, description="an input video's RGB frames once decoded (width x "
                                      "height x 3 x frames, from the container): the memory one video may take")
    max_output_frames: int = Field(2000, ge=1, description="frames a request may produce, after extension "
                                   "windows and interpolation")
    max_output_pixel_frames: int = Field(1280 * 720 * 2000, ge=1, description="a request's cost: output frames "
                                         "x width x height")


class RetentionConfig(_Strict):
    """How long records and their files are kept; unset: for ever (until deleted)."""

    days: float | None = Field(None, gt=0, description="jobs, sessions and uploads older than this are removed "
                                                       "with their files, on disk and in the bucket")
    sweep_interval_s: float = Field(3600, gt=0)


class EnhancerConfig(_Strict):
    """The prompt enhancer (`enhance_prompt`, the *_enhanced job types): a causal LM with a chat template."""

    model: str = Field("tiny", description='"tiny" (a random Qwen2 twin: noise), a local directory or a hub id of an '
                                           "instruct model, e.g. Qwen/Qwen2.5-3B-Instruct")
    max_new_tokens: int = Field(256, ge=16, le=1024)
    timeout_s: float = Field(30.0, gt=0, description="past this a job goes on with its prompt as sent, and says so")
    # POST /v1/route's reading of a query in words: past any bound the keyword rules answer, and the answer says so
    read_max_input_tokens: int = Field(1024, ge=16, le=32768, description="a longer query (in the model's tokens) "
                                       "is not given to the model")
    read_max_new_tokens: int = Field(128, ge=16, le=1024, description="a reading cut off here is not used")
    read_timeout_s: float = Field(10.0, gt=0, description="the route stops waiting, and the model stops writing")
    device: str | None = None
    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})


class AuthConfig(_Strict):
    """API keys (`Authorization: Bearer <key>`); with none configured the service runs open."""

    api_keys: list[SecretStr] = Field(default_factory=list, description="keys, or `sha256:<hex>` digests of them")
    admin_keys: list[SecretStr] = Field(default_factory=list, description="keys that see every key's records")
    keys_env: str = Field("WAN_SERVE_API_KEYS", description="env var holding more keys, comma-separated")
    required: bool = Field(False, description="refuse to start without a key: production configs set it")
    max_active_jobs_per_key: int = Field(32, ge=1, description="queued + running jobs per key before a 429, so "
                                                               "one client cannot starve the others")

    def keys(self) -> Keys:
        return Keys.resolve([k.get_secret_value() for k in self.api_keys],
                            [k.get_secret_value() for k in self.admin_keys], self.keys_env)


class AppConfig(_Strict):
    models: list[ModelConfig] = Field(min_length=1)
    job_db: str = "data/jobs.db"
    storage: StorageConfig = StorageConfig()
    webhooks: WebhookConfig = WebhookConfig()
    extend: ExtendConfig = ExtendConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    media_urls: MediaURLConfig = MediaURLConfig()
    retention: RetentionConfig = RetentionConfig()
    enhancer: EnhancerConfig | None = Field(None, description="unset: no prompt enhancement (asking for it is a 400)")
    api_docs: bool = Field(True, description="serve /docs, /redoc and /openapi.json (without a key)")
    public_url: str = Field("", description="this service's external base URL, for asset links in webhooks")
    job_types: dict[ConfiguredJobType, str] = Field(default_factory=lambda: dict(DEFAULT_JOB_TYPES), description="the "
                                          "preset each job type runs, for models that do not name their own")
    orphan_sweep_s: float = Field(30.0, gt=0, description="how often the job tracker fails the queued and running "
                                  "jobs whose flow runner replica is gone (a crash), and sends their webhooks")
    health_check_period_s: float = Field(10.0, gt=0, description="how often Serve checks that each replica is alive "
                                         "(Serve's own default): a replica that died is replaced within about this")
    poll_after_ms: int = Field(1000, ge=100)
    events_keepalive_s: float = Field(15.0, gt=0, description="a comment on every SSE stream this often, so proxies "
                                      "keep an idle stream open")
    studio: bool = Field(True, description="serve the web studio at / (static files; its API calls need a key)")
    encoder_replicas: int = Field(1, ge=1)
    interpolator_replicas: int = Field(1, ge=1)
    gateway_replicas: int = Field(1, ge=1)
    gateway_max_ongoing_requests: int = Field(1000, ge=1, description="requests one gateway replica serves at "
                                              "once; each open event stream holds one")

    @model_validator(mode="after")
    def _unique(self) -> AppConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"each model may be listed once; got {names}")
        for m in self.models:
            for job_type in DEFAULT_JOB_TYPES:
                if self.preset_name(m, job_type) not in m.all_presets:
                    raise ValueError(f"{m.name}: job type {job_type} runs preset {self.preset_name(m, job_type)!r}, "
                                     f"which it does not have ({', '.join(m.all_presets)})")
        return self

    def preset_name(self, model: ModelConfig, job_type: JobType) -> str:
        """The preset `job_type` runs on `model` (an *_enhanced one, its plain type's): the model's own mapping, else
        the app's."""
        plain = JobType(job_type.base)
        return model.job_types.get(plain) or self.job_types.get(plain) or DEFAULT_JOB_TYPES[plain]

    def absolute(self, base: Path) -> AppConfig:
        """Paths resolved against `base`, since Ray workers do not share the driver's working directory."""
        storage = self.storage.model_copy(update={"root": str((base / self.storage.root).resolve())})
        return self.model_copy(update={"job_db": str((base / self.job_db).resolve()), "storage": storage})

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def variant(self, name: str) -> Variant:
        """A served model's variant, with its configured defaults."""
        model = self.model(name)
        assert model is not None, f"{name} is not served"
        return model.variant

    def default_model(self, task: Task) -> str | None:
        """The model named default for `task`, else the first served model that can do it."""
        for m in self.models:
            if task in m.default_for:
                return m.name
        return next((m.name for m in self.models if task in CATALOG[m.name].tasks), None)


def generator_name(model: str) -> str:
    """The generator deployment's name for a variant: Ray names allow no dots."""
    return "Generator-" + re.sub(r"[^A-Za-z0-9_-]", "_", model)
