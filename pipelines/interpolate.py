"""Motion-compensated frame interpolation: raise a clip's frame rate (16 -> 32 fps typically) on the CPU.

Optical flow is OpenCV's DIS (a maintained, fast dense-flow method), computed once per source pair in both
directions on grayscale. Each in-between frame backward-warps both neighbours with `cv2.remap` along
Super-SloMo's approximate intermediate flows and blends them by time, trusting a neighbour less where its
sample falls outside the picture (content entering or leaving it). Torch- and Ray-free, so any CPU stage can
run it; OpenCV uses all cores through its own thread pool.
"""

from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np

# Picked with benchmarks/interpolation.py (832x480): MEDIUM is ~0.5 dB PSNR better than FAST overall and
# 0.6-0.8 dB on a moving object, for ~3.5x the CPU; 81 frames still take seconds on 2 cores.
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
# DIS rejects images smaller than its patch; smaller frames are edge-padded to this side for the flow only.
MIN_FLOW_SIDE = 16
# Weight kept by a neighbour whose sample lies outside its frame, so pixels outside both blend by time.
OUTSIDE_WEIGHT = 0.01
# Rates are read as the nearest fraction with at most this denominator, so 29.97 -> 59.94 is exactly 2x.
MAX_RATE_DENOMINATOR = 1_000_000


def interpolated_count(num_frames: int, src_fps: float, dst_fps: float) -> int:
    """How many frames `interpolate` returns: one per output tick up to the last source frame."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    step = _step(src_fps, dst_fps)
    return math.floor((num_frames - 1) / step) + 1


def interpolate(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Resample FxHxWx3 uint8 RGB frames from `src_fps` to `dst_fps` (>= src_fps) by motion compensation.

    Output frame j shows source time j * src_fps / dst_fps (in source frames): a whole number copies that
    source frame exactly, anything else is synthesized between its two neighbours. With equal rates the
    input array itself is returned.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected FxHxWx3 uint8 frames with F >= 1, got {frames.shape} {frames.dtype}")
    step = _step(src_fps, dst_fps)
    if step == 1:
        return frames
    count = interpolated_count(len(frames), src_fps, dst_fps)
    out = np.empty((count, *frames.shape[1:]), dtype=np.uint8)
    flow = _FlowPair(frames.shape[1], frames.shape[2])
    for j in range(count):
        position = j * step
        left, t = divmod(position, 1)
        if t == 0:
            out[j] = frames[left]
        else:
            out[j] = flow.synthesize(frames, int(left), float(t))
    return out


def _rate(fps: float) -> Fraction:
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"frame rates must be positive and finite, got {fps}")
    return Fraction(fps).limit_denominator(MAX_RATE_DENOMINATOR)


def _step(src_fps: float, dst_fps: float) -> Fraction:
    """Source frames advanced per output frame (<= 1)."""
    src, dst = _rate(src_fps), _rate(dst_fps)
    if dst < src:
        raise ValueError(f"dst_fps ({dst_fps}) must be at least src_fps ({src_fps}); this only raises the rate")
    return src / dst


class _FlowPair:
    """The flows of the current source pair, kept while its in-between frames are made."""

    def __init__(self, height: int, width: int) -> None:
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESET)
        self._grid = np.dstack(np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)))
        self._ones = np.ones((height, width), np.float32)
        self._left = -1
        self._frame0 = self._frame1 = self._flow01 = self._flow10 = np.empty(0)

    def synthesize(self, frames: np.ndarray, left: int, t: float) -> np.ndarray:
        """The frame at time t in (0, 1) between frames[left] and frames[left + 1]."""
        if left != self._left:
            self._frame0, self._frame1 = frames[left], frames[left + 1]
            gray0 = cv2.cvtColor(self._frame0, cv2.COLOR_RGB2GRAY)
            gray1 = cv2.cvtColor(self._frame1, cv2.COLOR_RGB2GRAY)
            self._flow01, self._flow10 = self._flow(gray0, gray1), self._flow(gray1, gray0)
            self._left = left
        # Super-SloMo's intermediate flows, from time t back to each neighbour, as absolute sampling positions.
        map0 = self._grid + cv2.addWeighted(self._flow01, -(1 - t) * t, self._flow10, t * t, 0)
        map1 = self._grid + cv2.addWeighted(self._flow01, (1 - t) ** 2, self._flow10, -t * (1 - t), 0)
        warped0 = cv2.remap(self._frame0, map0, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        warped1 = cv2.remap(self._frame1, map1, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Content entering or leaving the picture has no source on one side: the sample there is only the
        # replicated border, so weight each side by how much of its sample lies inside its frame.
        inside0 = cv2.remap(self._ones, map0, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        inside1 = cv2.remap(self._ones, map1, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return cv2.blendLinear(warped0, warped1, (1 - t) * (inside0 + OUTSIDE_WEIGHT), t * (inside1 + OUTSIDE_WEIGHT))

    def _flow(self, gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        h, w = gray0.shape
        pad_y, pad_x = max(0, MIN_FLOW_SIDE - h), max(0, MIN_FLOW_SIDE - w)
        if pad_y or pad_x:
            gray0 = cv2.copyMakeBorder(gray0, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
            gray1 = cv2.copyMakeBorder(gray1, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
        return self._dis.calc(gray0, gray1, None)[:h, :w]
