"""The Wan variant catalog: what each model is, what it can do, and its native defaults.

Everything the router and the generator need to know about a model lives here, so that adding a
variant is one entry, not a hunt through the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pipelines.options import Scheduler


class Task(StrEnum):
    """What a request asks a model to do."""

    T2V = "t2v"  # text -> video
    T2I = "t2i"  # text -> one frame
    I2V = "i2v"  # first frame (+ text) -> video
    FLF2V = "flf2v"  # first + last frame -> video
    V2V = "v2v"  # video -> restyled video (SDEdit)
    VACE = "vace"  # video + mask (+ reference images) -> edited video
    ANIMATE = "animate"  # a character image + pose and face videos (+ background and mask: replace) -> video


class Family(StrEnum):
    """Pipeline families: one tiny twin each, since the twin only has to match the architecture."""

    T2V = "t2v"
    I2V = "i2v"
    FLF2V = "flf2v"
    VACE = "vace"
    TI2V = "ti2v"
    A14B = "a14b"
    I2V_A14B = "i2v_a14b"  # Wan 2.2's two-expert image-to-video: no CLIP, first and/or last frame in the latents
    ANIMATE = "animate"  # Wan 2.2 Animate: motion and face encoders on an I2V-style transformer


RESOLUTIONS_480 = {"480p": (832, 480), "480p-portrait": (480, 832)}
RESOLUTIONS_512 = {"512p": (912, 512), "512p-portrait": (512, 912)}
RESOLUTIONS_720 = {"720p": (1280, 720), "720p-portrait": (720, 1280)}
RESOLUTIONS_704 = {"704p": (1280, 704), "704p-portrait": (704, 1280)}
RESOLUTIONS_TINY = {"tiny": (64, 32), "tiny-portrait": (32, 64)}
AREA_480P = 832 * 480
# Upstream Wan's default negative prompt (wan/configs/shared_config.py), which every official example sends;
# its fullwidth commas are upstream's.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"  # noqa: RUF001
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"  # noqa: RUF001
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"  # noqa: RUF001
)


@dataclass(frozen=True)
class Variant:
    """One servable Wan model.

    `sizes` are the named resolution presets as (width, height); any other size is accepted when both
    sides are multiples of `size_multiple` and its area is no larger than the largest preset. A tiny twin has
    its real variant's presets besides its own, so clients can ask for real sizes; `tiny` stays its default.
    """

    name: str
    family: Family
    repo_id: str | None
    tasks: tuple[Task, ...]
    fps: int
    sizes: dict[str, tuple[int, int]]
    default_size: str
    size_multiple: int = 16
    max_frames: int = 81
    default_frames: int = 81
    steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    flow_shift: float = 3.0
    flow_shift_480p: float | None = None  # where upstream shifts less at 480p than at the larger sizes
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    scheduler: Scheduler = "unipc"
    boundary_ratio: float | None = None
    tiny: bool = False
    face_size: int = 512  # Animate: the side of the face video's square crops its motion encoder reads
    description: str = ""
    frame_multiple: int = field(default=4, repr=False)

    @property
    def max_area(self) -> int:
        return max(w * h for w, h in self.sizes.values())

    @property
    def default_area(self) -> int:
        """The area of the default preset: what a job with an image and no size is fitted to."""
        width, height = self.sizes[self.default_size]
        return width * height

    def flow_shift_for(self, width: int, height: int) -> float:
        """The scheduler shift for an output size: Wan 2.1 14B models take 3.0 at 480p and 5.0 at 720p."""
        if self.flow_shift_480p is not None and width * height <= AREA_480P:
            return self.flow_shift_480p
        return self.flow_shift

    def frames_for_seconds(self, seconds: float) -> int:
        """Map a duration onto the 4k+1 grid at the native fps: 5 s at 16 fps -> 81 frames."""
        k = round(seconds * self.fps / self.frame_multiple)
        return max(k, 1) * self.frame_multiple + 1

    def seconds_for_frames(self, num_frames: int) -> float:
        return (num_frames - 1) / self.fps

    def on_frame_grid(self, num_frames: int) -> bool:
        return num_frames >= 1 and (num_frames - 1) % self.frame_multiple == 0


# A tiny twin's presets: its own, then its real variant's.
TWIN_14B = RESOLUTIONS_TINY | RESOLUTIONS_480 | RESOLUTIONS_720
TWIN_VACE = RESOLUTIONS_TINY | RESOLUTIONS_480 | RESOLUTIONS_512 | RESOLUTIONS_720
_T2V = (Task.T2V, Task.T2I, Task.V2V)
_VACE = (Task.T2V, Task.VACE)
_TI2V = (Task.T2V, Task.T2I, Task.I2V)


def _catalog(*variants: Variant) -> dict[str, Variant]:
    return {v.name: v for v in variants}


CATALOG: dict[str, Variant] = _catalog(
    # --- Wan 2.1 --------------------------------------------------------------------------------
    Variant("Wan2.1-T2V-1.3B", Family.T2V, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", _T2V, 16,
            RESOLUTIONS_480, "480p", guidance_scale=5.0, flow_shift=3.0,
            description="Wan 2.1 text-to-video, 1.3B; 480p"),
    Variant("Wan2.1-T2V-14B", Family.T2V, "Wan-AI/Wan2.1-T2V-14B-Diffusers", _T2V, 16,
            RESOLUTIONS_480 | RESOLUTIONS_720, "720p", flow_shift=5.0, flow_shift_480p=3.0,
            description="Wan 2.1 text-to-video, 14B; 480p and 720p"),
    Variant("Wan2.1-I2V-14B-480P", Family.I2V, "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", (Task.I2V,), 16,
            RESOLUTIONS_480, "480p", steps=40, flow_shift=3.0,
            description="Wan 2.1 image-to-video, 14B; 480p"),
    Variant("Wan2.1-I2V-14B-720P", Family.I2V, "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", (Task.I2V,), 16,
            RESOLUTIONS_720, "720p", steps=40, flow_shift=5.0,
            description="Wan 2.1 image-to-video, 14B; 720p"),
    Variant("Wan2.1-FLF2V-14B-720P", Family.FLF2V, "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers", (Task.FLF2V,), 16,
            RESOLUTIONS_720, "720p", flow_shift=16.0,
            description="Wan 2.1 first-last-frame-to-video, 14B; 720p"),
    Variant("Wan2.1-VACE-1.3B", Family.VACE, "Wan-AI/Wan2.1-VACE-1.3B-diffusers", _VACE, 16,
            RESOLUTIONS_480 | RESOLUTIONS_512, "480p", flow_shift=3.0,
            description="Wan 2.1 VACE all-in-one editing, 1.3B; 480p"),
    Variant("Wan2.1-VACE-14B", Family.VACE, "Wan-AI/Wan2.1-VACE-14B-diffusers", _VACE, 16,
            RESOLUTIONS_480 | RESOLUTIONS_512 | RESOLUTIONS_720, "720p", flow_shift=5.0, flow_shift_480p=3.0,
            description="Wan 2.1 VACE all-in-one editing, 14B; 480p and 720p"),
    # --- Wan 2.2 --------------------------------------------------------------------------------
    Variant("Wan2.2-T2V-A14B", Family.A14B, "Wan-AI/Wan2.2-T2V-A14B-Diffusers", (Task.T2V, Task.T2I), 16,
            RESOLUTIONS_480 | RESOLUTIONS_720, "720p", steps=40, guidance_scale=4.0, guidance_scale_2=3.0,
            flow_shift=12.0, boundary_ratio=0.875,
            description="Wan 2.2 text-to-video, two 14B experts (MoE)"),
    Variant("Wan2.2-I2V-A14B", Family.I2V_A14B, "Wan-AI/Wan2.2-I2V-A14B-Diffusers", (Task.I2V, Task.FLF2V), 16,
            RESOLUTIONS_480 | RESOLUTIONS_720, "720p", steps=40, guidance_scale=3.5, guidance_scale_2=3.5,
            flow_shift=5.0, boundary_ratio=0.9,
            description="Wan 2.2 image-to-video and first-last-frame, two 14B experts (MoE)"),
    Variant("Wan2.2-Animate-14B", Family.ANIMATE, "Wan-AI/Wan2.2-Animate-14B-Diffusers", (Task.ANIMATE,), 30,
            RESOLUTIONS_480 | RESOLUTIONS_720, "720p", max_frames=77, default_frames=77, steps=20, guidance_scale=1.0,
            flow_shift=5.0, description="Wan 2.2 character animation and replacement from pose and face videos, 14B"),
    Variant("Wan2.2-TI2V-5B", Family.TI2V, "Wan-AI/Wan2.2-TI2V-5B-Diffusers", _TI2V, 24,
            RESOLUTIONS_704, "704p", size_multiple=32,
            max_frames=121, default_frames=121, guidance_scale=5.0, flow_shift=5.0,
            description="Wan 2.2 text/image-to-video, 5B with the 48-channel VAE; 24 fps"),
    # --- Tiny twins: real pipeline classes, small random weights, for CPUs and tests -----------
    Variant("tiny-t2v", Family.T2V, None, _T2V, 16, TWIN_14B, "tiny", steps=4, tiny=True,
            description="Tiny twin of Wan2.1-T2V (random weights: noise, not pictures)"),
    Variant("tiny-i2v", Family.I2V, None, (Task.I2V,), 16, TWIN_14B, "tiny", steps=4, tiny=True,
            description="Tiny twin of Wan2.1-I2V (random weights: noise, not pictures)"),
    Variant("tiny-flf2v", Family.FLF2V, None, (Task.FLF2V,), 16, RESOLUTIONS_TINY | RESOLUTIONS_720, "tiny", steps=4,
            tiny=True, description="Tiny twin of Wan2.1-FLF2V (random weights: noise, not pictures)"),
    Variant("tiny-vace", Family.VACE, None, _VACE, 16, TWIN_VACE, "tiny", steps=4, tiny=True,
            description="Tiny twin of Wan2.1-VACE (random weights: noise, not pictures)"),
    Variant("tiny-ti2v", Family.TI2V, None, _TI2V, 24, RESOLUTIONS_TINY | RESOLUTIONS_704, "tiny", size_multiple=32,
            max_frames=121, default_frames=121, steps=4, tiny=True,
            description="Tiny twin of Wan2.2-TI2V-5B (random weights: noise, not pictures)"),
    Variant("tiny-a14b", Family.A14B, None, (Task.T2V, Task.T2I), 16, TWIN_14B, "tiny", steps=4,
            guidance_scale=4.0, guidance_scale_2=3.0, boundary_ratio=0.875, tiny=True,
            description="Tiny twin of Wan2.2-T2V-A14B (random weights: noise, not pictures)"),
    Variant("tiny-animate", Family.ANIMATE, None, (Task.ANIMATE,), 30, TWIN_14B, "tiny", max_frames=77,
            default_frames=77, steps=4, guidance_scale=1.0, flow_shift=5.0, face_size=16, tiny=True,
            description="Tiny twin of Wan2.2-Animate-14B (random weights: noise, not pictures)"),
    Variant("tiny-i2v-a14b", Family.I2V_A14B, None, (Task.I2V, Task.FLF2V), 16, TWIN_14B, "tiny", steps=4,
            guidance_scale=3.5, guidance_scale_2=3.5, flow_shift=5.0, boundary_ratio=0.9, tiny=True,
            description="Tiny twin of Wan2.2-I2V-A14B (random weights: noise, not pictures)"),
)


def get_variant(name: str) -> Variant:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown Wan variant {name!r}; known: {', '.join(CATALOG)}") from None
