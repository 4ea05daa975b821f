"""Motion-compensated frame interpolation: raise a clip's frame rate (16 -> 32 fps typically) on the CPU.

Optical flow is OpenCV's DIS (a maintained, fast dense-flow method), computed once per source pair in both
directions on a grayscale copy whose short side is at most FLOW_SIDE: motion is smooth at that scale, and the
flow's cost stops growing with the frame. Each in-between frame backward-warps both neighbours at full
resolution with `cv2.remap` along Super-SloMo's approximate intermediate flows (upsampled) and blends them by
time, trusting a neighbour less where its sample falls outside the picture (content entering or leaving it).
Torch- and Ray-free, so any CPU stage can run it; OpenCV runs on its own thread pool (the stage bounds it with
`cv2.setNumThreads`).
"""

from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np

# Picked with benchmarks/interpolation.py on camera footage at 720p and 480p: with the flow at FLOW_SIDE,
# ULTRAFAST is within 0.2 dB of FAST and MEDIUM for 50-60% of MEDIUM's CPU, and the flow at full size gains
# 0.2 dB for 1.3-1.8x the CPU.
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST
# The flow is computed with the short side at most this long: objects' motion is resolved there and the flow's
# cost stops growing with the frame size.
FLOW_SIDE = 240
# DIS rejects images smaller than its patch; smaller flow images are edge-padded to this side.
MIN_FLOW_SIDE = 16
# Bilinear warping at a fractional offset blurs (at half a pixel it averages two pixels); a mild sharpening of
# each source frame before it makes up for most of that (+0.9 dB on footage at 480p), far cheaper than bicubic warping.
SHARPEN = 0.1
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
    flow = _FlowPair(frames)
    for j in range(count):
        left, t = divmod(j * step, 1)
        if t == 0:
            out[j] = frames[left]
        else:
            flow.synthesize(int(left), float(t), out[j])
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
    """The flows of the current source pair, kept while its in-between frames are made, and full-size scratch
    images reused for every frame: a fresh allocation this large is new memory each time, and faulting it in
    costs as much as the work written into it."""

    def __init__(self, frames: np.ndarray) -> None:
        self._frames = frames
        height, width = frames.shape[1:3]
        self._size = (width, height)
        scale = min(1.0, FLOW_SIDE / min(height, width))
        self._small = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Small-image pixels to full-image pixels, per axis.
        self._scale = np.float32([width / self._small[0], height / self._small[1]])
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESET)
        self._grid = np.dstack(np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)))
        self._ones = np.ones((height, width), np.float32)
        self._up = np.empty((height, width, 2), np.float32)
        self._positions = [np.empty((height, width, 2), np.float32) for _ in range(2)]
        self._fixed = [(np.empty((height, width, 2), np.int16), np.empty((height, width), np.uint16)) for _ in range(2)]
        self._warped = [np.empty((height, width, 3), np.uint8) for _ in range(2)]
        self._kernel = np.float32([[0, -SHARPEN, 0], [-SHARPEN, 1 + 4 * SHARPEN, -SHARPEN], [0, -SHARPEN, 0]])
        self._sources: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._left = -1
        self._flows = (np.empty(0), np.empty(0))

    def synthesize(self, left: int, t: float, out: np.ndarray) -> None:
        """Write the frame at time t in (0, 1) between frames[left] and frames[left + 1] into `out`."""
        (sharp0, gray0), (sharp1, gray1) = self._source(left), self._source(left + 1)
        if left != self._left:
            self._flows = (self._flow(gray0, gray1), self._flow(gray1, gray0))
            self._left = left
        # Super-SloMo's intermediate flows from time t back to each neighbour: F_t0 = -(1 - t) t F01 + t^2 F10
        # and F_t1 = -(1 - t) / t * F_t0, so one upsampled flow serves both sides.
        flow_t0 = cv2.addWeighted(self._flows[0], -(1 - t) * t, self._flows[1], t * t, 0)
        cv2.resize(flow_t0, self._size, dst=self._up, interpolation=cv2.INTER_LINEAR)
        ratio = (1 - t) / t
        np.add(self._grid, self._up, out=self._positions[0])
        cv2.scaleAdd(self._up, -ratio, self._grid, dst=self._positions[1])
        sides = zip(self._positions, self._fixed, (sharp0, sharp1), self._warped, strict=True)
        for positions, fixed, source, warped in sides:
            # Fixed-point maps: converting once and remapping is faster than remapping from float positions.
            cv2.convertMaps(positions, None, cv2.CV_16SC2, dstmap1=fixed[0], dstmap2=fixed[1])
            cv2.remap(source, *fixed, cv2.INTER_LINEAR, dst=warped, borderMode=cv2.BORDER_REPLICATE)
        cv2.addWeighted(self._warped[0], 1 - t, self._warped[1], t, 0, dst=out)
        # Content entering or leaving the picture has no source on one side: the sample there is only the
        # replicated border, so weight each side by how much of its sample lies inside its frame. Only pixels
        # within the largest displacement of an edge can sample outside, so only those strips are reweighted.
        band = 1 + math.ceil(float(np.abs(flow_t0).max()) * max(1.0, ratio))
        height, width = out.shape[:2]
        for strip in (np.s_[:band], np.s_[max(0, height - band) :], np.s_[:, :band], np.s_[:, max(0, width - band) :]):
            inside0, inside1 = (
                cv2.remap(self._ones, np.ascontiguousarray(positions[strip]), None, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                for positions in self._positions
            )
            out[strip] = cv2.blendLinear(
                self._warped[0][strip], self._warped[1][strip],
                (1 - t) * (inside0 + OUTSIDE_WEIGHT), t * (inside1 + OUTSIDE_WEIGHT),
            )

    def _source(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame `index` sharpened for warping and its small grayscale for the flow, made once though two pairs
        use them; only the current pair's are kept."""
        if index not in self._sources:
            frame = self._frames[index]
            gray = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), self._small, interpolation=cv2.INTER_AREA)
            self._sources = {k: v for k, v in self._sources.items() if k >= index - 1}
            self._sources[index] = (cv2.filter2D(frame, -1, self._kernel, borderType=cv2.BORDER_REPLICATE), gray)
        return self._sources[index]

    def _flow(self, gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        """The flow from gray0 to gray1 on the small image, in full-image pixels."""
        h, w = gray0.shape
        pad_y, pad_x = max(0, MIN_FLOW_SIDE - h), max(0, MIN_FLOW_SIDE - w)
        if pad_y or pad_x:
            gray0 = cv2.copyMakeBorder(gray0, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
            gray1 = cv2.copyMakeBorder(gray1, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
        flow = self._dis.calc(gray0, gray1, None)
        if pad_y or pad_x:
            flow = np.ascontiguousarray(flow[:h, :w])
        return np.multiply(flow, self._scale, out=flow)
