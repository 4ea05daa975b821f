"""Conditioning inputs shaped for Wan: source clips fitted to the output size, masks and keyframes.

Torch-free numpy and OpenCV, so the ingress can shrink an upload to the output size before it travels.
Masks are FxHxW uint8 where 255 means "generate here" and 0 means "keep the source", as VACE reads them.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

GRAY = 127  # VACE's neutral value for frames it should invent
FitMode = Literal["crop", "pad"]
ResizePolicy = Literal["center_crop", "pad", "stretch"]


def grid_ceil(num_frames: int, multiple: int = 4) -> int:
    """The smallest frame count on Wan's 4k+1 grid that holds `num_frames`."""
    return -(-max(num_frames - 1, 0) // multiple) * multiple + 1


def pad_frames(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """Lengthen a clip to `num_frames` by holding its last frame (outputs past the source are trimmed)."""
    if len(frames) >= num_frames:
        return frames[:num_frames]
    return np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), axis=0)])


def _resize(frames: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([cv2.resize(f, (width, height), interpolation=interpolation) for f in frames])


def fit_clip(
    frames: np.ndarray, mask: np.ndarray | None, width: int, height: int, mode: FitMode
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit a source clip (and its mask) to width x height.

    `crop` (inpainting) scales to cover and centre-crops; `pad` (outpainting) scales to fit inside, centres
    the clip on gray and marks the border to be generated, keeping the source unless its own mask says
    otherwise.
    """
    h, w = frames.shape[1:3]
    scale = max(width / w, height / h) if mode == "crop" else min(width / w, height / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    frames = _resize(frames, sw, sh, cv2.INTER_AREA)
    if mask is not None:
        mask = _resize(mask, sw, sh, cv2.INTER_NEAREST)
    if mode == "crop":
        top, left = (sh - height) // 2, (sw - width) // 2
        frames = frames[:, top : top + height, left : left + width]
        return np.ascontiguousarray(frames), None if mask is None else np.ascontiguousarray(
            mask[:, top : top + height, left : left + width])
    top, left = (height - sh) // 2, (width - sw) // 2
    canvas = np.full((len(frames), height, width, 3), GRAY, np.uint8)
    canvas[:, top : top + sh, left : left + sw] = frames
    region = np.full((len(frames), height, width), 255, np.uint8)
    region[:, top : top + sh, left : left + sw] = 0 if mask is None else mask
    return canvas, region


def size_for_image(image: np.ndarray, max_area: int, multiple: int) -> tuple[int, int]:
    """(width, height) with the image's aspect ratio, as large as fits in `max_area`, on the size grid: how
    upstream Wan and the diffusers examples size an image-to-video output."""
    aspect = image.shape[0] / image.shape[1]
    height = max(multiple, math.isqrt(int(max_area * aspect)) // multiple * multiple)
    width = max(multiple, math.isqrt(int(max_area / aspect)) // multiple * multiple)
    return width, height


def fit_image(image: np.ndarray, width: int, height: int, policy: ResizePolicy) -> np.ndarray:
    """An HxWx3 image at width x height: scaled to cover and centre-cropped, scaled to fit and padded with gray,
    or stretched (the one policy that changes its proportions)."""
    if policy == "stretch":
        return _resize(image[None], width, height, cv2.INTER_AREA)[0]
    fitted, _ = fit_clip(image[None], None, width, height, "crop" if policy == "center_crop" else "pad")
    return fitted[0]


def binary_mask(frames: np.ndarray, invert: bool = False) -> np.ndarray:
    """A decoded mask video (white = generate) as FxHxW uint8 0/255."""
    bright = frames.mean(axis=-1) > 127
    return np.where(bright != invert, 255, 0).astype(np.uint8)


def keyframes(
    num_frames: int, width: int, height: int, first: np.ndarray | None, last: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """VACE conditioning that keeps a first and/or last frame and generates everything between."""
    video = np.full((num_frames, height, width, 3), GRAY, np.uint8)
    mask = np.full((num_frames, height, width), 255, np.uint8)
    for index, image in ((0, first), (num_frames - 1, last)):
        if image is not None:
            video[index] = _resize(image[None], width, height, cv2.INTER_AREA)[0]
            mask[index] = 0
    return video, mask
