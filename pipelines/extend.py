"""Long video by extension: an initial window, then windows that reuse the tail of what exists.

Each extension is a new `window`-frame generation whose first `overlap` frames are the last `overlap`
frames made so far, so it adds `window - overlap` frames: 81 + 66 * N with Wan's 81-frame windows and
15 frames of context. VACE keeps the context frames through its mask; a model without VACE continues
image-to-video from the last frame, making just enough frames for the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from pipelines.conditioning import GRAY, grid_ceil
from pipelines.request import GenerationRequest, InvalidRequest
from pipelines.variants import Task

Method = Literal["vace", "i2v"]


@dataclass(frozen=True)
class Segment:
    """Frames [start, stop) of the combined video, delivered as an asset of their own."""

    name: str
    start: int
    stop: int


def check_overlap(overlap: int, window: int) -> None:
    """Each window must reuse at least one frame and add at least one."""
    if not 1 <= overlap < window:
        raise InvalidRequest("overlap_frames", f"overlap_frames must be within 1..{window - 1} for {window}-frame "
                                               "windows")


def extended_length(window: int, overlap: int, extensions: int) -> int:
    return window + (window - overlap) * extensions


def extensions_to_cover(num_frames: int, window: int, overlap: int) -> int:
    """How many extensions make a clip of at least `num_frames` frames."""
    return max(0, -(-(num_frames - window) // (window - overlap)))


def segments(window: int, overlap: int, extensions: int) -> list[Segment]:
    """Where each part lies in the combined video: the initial clip, then each extension's new frames."""
    parts = [Segment("initial", 0, window)]
    for k in range(1, extensions + 1):
        start = extended_length(window, overlap, k - 1)
        parts.append(Segment(f"extension_{k:03d}", start, start + window - overlap))
    return parts


def extension_request(
    base: GenerationRequest,
    so_far: np.ndarray,
    index: int,
    window: int,
    overlap: int,
    method: Method,
    source: np.ndarray | None = None,
    source_mask: np.ndarray | None = None,
) -> tuple[GenerationRequest, slice]:
    """The request for extension `index` (1-based) and which of its output frames are new.

    With VACE the window starts with the last `overlap` frames made so far (mask 0: keep them); the rest
    follows the source clip where there is one (with its mask), else is gray and generated freely.
    """
    seed = (base.seed + index) % 2**63
    new = window - overlap
    if method == "i2v":
        request = replace(base, task=Task.I2V, image=so_far[-1], last_image=None, video=None, mask=None,
                          reference_images=[], num_frames=grid_ceil(new + 1), seed=seed)
        return request, slice(1, 1 + new)
    start = len(so_far) - overlap
    h, w = so_far.shape[1:3]
    video = np.full((window, h, w, 3), GRAY, np.uint8)
    mask = np.full((window, h, w), 255, np.uint8)
    video[:overlap], mask[:overlap] = so_far[-overlap:], 0
    if source is not None and start + overlap < len(source):
        follow = source[start + overlap : start + window]
        video[overlap : overlap + len(follow)] = follow
        if source_mask is not None:
            mask[overlap : overlap + len(follow)] = source_mask[start + overlap : start + window]
    request = replace(base, task=Task.VACE, image=None, last_image=None, video=video, mask=mask,
                      num_frames=window, seed=seed)
    return request, slice(overlap, window)
