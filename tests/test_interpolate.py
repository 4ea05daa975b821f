"""Frame interpolation: counts and exact copies, edge cases, and quality against exact in-between frames.

The quality clip is rendered, not recorded, so every in-between frame has an exact ground truth: a camera
pans and slowly zooms over a natural-looking texture (multi-scale smoothed noise with sharp-edged shapes, as
no photograph ships in the installed packages) while a textured object crosses it on its own path. The
scene is supersampled 2x and box-filtered down, as a sensor would, at any real-valued time.
`benchmarks/interpolation.py` measures on the same scene.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipelines.interpolate import interpolate, interpolated_count

SUPERSAMPLE = 2


def smooth_noise(height: int, width: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """HxW float32 Gaussian-smoothed white noise of unit std; large sigmas are made at lower resolution."""
    factor = max(1, int(sigma // 2))
    small = rng.standard_normal((height // factor + 1, width // factor + 1)).astype(np.float32)
    layer = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / factor), (width, height), interpolation=cv2.INTER_CUBIC)
    return layer / layer.std()


def natural_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 float32 in 0..255 with a photograph's statistics: detail at every scale (coarse strongest),
    mostly luminance with softer colour, and sharp-edged shaded shapes for occlusion edges."""
    luma = sum(sigma**0.8 * smooth_noise(height, width, sigma, rng) for sigma in (1, 2.5, 6, 16, 40, 100))
    luma = 110 + 45 * luma / luma.std()
    u, v = (smooth_noise(height, width, 12, rng) + 2 * smooth_noise(height, width, 60, rng) for _ in range(2))
    image = np.dstack([luma + 7 * v, luma - 2 * u - 4 * v, luma + 9 * u])
    for _ in range(height * width // 15000):
        color = (rng.uniform(30, 220) + rng.uniform(-40, 40, 3)).tolist()
        center = (int(rng.integers(width)), int(rng.integers(height)))
        axes = (int(rng.integers(6, 60)), int(rng.integers(6, 60)))
        cv2.ellipse(image, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
    grain = 1 + 0.12 * smooth_noise(height, width, 1.5, rng) + 0.08 * smooth_noise(height, width, 5, rng)
    return np.clip(image * grain[..., None], 0, 255).astype(np.float32)


class Scene:
    """A panning, zooming camera over a texture, with a textured ellipse moving independently in front.

    Motion per unit of time (one frame of the full-rate clip): the camera pans `pan` pixels and zooms in by
    `zoom`, the object moves `object_velocity` pixels on screen; none of it in whole pixels, so every frame
    needs resampling, as in real footage.
    """

    def __init__(
        self,
        height: int,
        width: int,
        seed: int = 0,
        pan: tuple[float, float] = (2.3, -1.1),
        zoom: float = 0.002,
        object_velocity: tuple[float, float] = (3.4, 1.5),
    ) -> None:
        rng = np.random.default_rng(seed)
        self.height, self.width = height, width
        self.pan, self.zoom, self.object_velocity = pan, zoom, object_velocity
        s = SUPERSAMPLE
        margin = 200  # texture beyond the first view, for the pan and zoom
        self.background = natural_texture(s * (height + 2 * margin), s * (width + 2 * margin), rng)
        self.origin = (s * margin, s * margin)
        rx, ry = s * min(height, width) // 5, s * min(height, width) // 7  # the object's radii
        self.sprite = natural_texture(2 * ry, 2 * rx, rng) * np.float32([1.2, 0.9, 0.6])  # warmer than the ground
        self.alpha = np.zeros(self.sprite.shape[:2], np.float32)
        cv2.ellipse(self.alpha, (rx, ry), (rx - 2, ry - 2), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        self.object_start = (width * 0.3, height * 0.35)

    def render(self, time: float) -> np.ndarray:
        """The HxWx3 uint8 frame at `time` (any real number)."""
        s = SUPERSAMPLE
        h, w = s * self.height, s * self.width
        scale = 1 / (1 + self.zoom) ** time  # texture pixels per screen pixel; < 1 zooms in
        cx = self.origin[0] + w / 2 + s * self.pan[0] * time
        cy = self.origin[1] + h / 2 + s * self.pan[1] * time
        # Screen pixel (x, y) shows texture pixel (cx + scale (x - w/2), cy + scale (y - h/2)).
        camera = np.float32([[scale, 0, cx - scale * w / 2], [0, scale, cy - scale * h / 2]])
        frame = cv2.warpAffine(self.background, camera, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        place = self._object_placement(time)
        sprite = cv2.warpAffine(self.sprite, place, (w, h), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(self.alpha, place, (w, h), flags=cv2.INTER_LINEAR)[..., None]
        frame = frame * (1 - alpha) + sprite * alpha
        frame = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return np.clip(frame + 0.5, 0, 255).astype(np.uint8)

    def object_mask(self, time: float) -> np.ndarray:
        """HxW bool: the pixels the foreground object covers at `time`."""
        s = SUPERSAMPLE
        alpha = cv2.warpAffine(self.alpha, self._object_placement(time), (s * self.width, s * self.height))
        return cv2.resize(alpha, (self.width, self.height), interpolation=cv2.INTER_AREA) > 0.5

    def _object_placement(self, time: float) -> np.ndarray:
        """Sprite to supersampled screen: the object's top-left corner moves at `object_velocity`."""
        x = SUPERSAMPLE * (self.object_start[0] + self.object_velocity[0] * time)
        y = SUPERSAMPLE * (self.object_start[1] + self.object_velocity[1] * time)
        return np.float32([[1, 0, x], [0, 1, y]])

    def clip(self, num_frames: int) -> np.ndarray:
        """Frames at times 0, 1, ..., num_frames - 1."""
        return np.stack([self.render(t) for t in range(num_frames)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels of all frames (one pooled MSE)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def blend_at(before: np.ndarray, after: np.ndarray, t: float) -> np.ndarray:
    """A plain cross-fade at time t: the baseline without motion."""
    return np.clip((1 - t) * before.astype(np.float32) + t * after + 0.5, 0, 255).astype(np.uint8)


def random_clip(num_frames: int, height: int = 24, width: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("num_frames", "src_fps", "dst_fps", "expected"),
    [
        (9, 16, 32, 17),  # 2F - 1
        (81, 16, 32, 161),
        (9, 16, 48, 25),  # 3F - 2
        (9, 16, 24, 13),  # floor(8 * 1.5) + 1
        (10, 16, 24, 14),  # floor(9 * 1.5) + 1
        (5, 29.97, 59.94, 9),  # decimal rates are still exactly 2x
        (5, 24, 60, 11),  # floor(4 * 2.5) + 1
        (7, 16, 16, 7),
        (1, 16, 32, 1),
    ],
)
def test_frame_counts(num_frames: int, src_fps: float, dst_fps: float, expected: int) -> None:
    assert interpolated_count(num_frames, src_fps, dst_fps) == expected
    out = interpolate(random_clip(num_frames), src_fps, dst_fps)
    assert out.shape == (expected, 24, 20, 3)
    assert out.dtype == np.uint8


@pytest.mark.parametrize(("src_fps", "dst_fps", "stride", "copies"), [(16, 32, 2, 1), (16, 48, 3, 1), (16, 24, 3, 2)])
def test_integer_positions_are_exact_copies(src_fps: float, dst_fps: float, stride: int, copies: int) -> None:
    """Every `stride` output frames land on a source frame again (`copies` source frames further on)."""
    frames = random_clip(7)
    out = interpolate(frames, src_fps, dst_fps)
    np.testing.assert_array_equal(out[::stride], frames[::copies])


def test_equal_rates_return_the_input() -> None:
    frames = random_clip(3)
    assert interpolate(frames, 16, 16) is frames


def test_one_frame_is_returned_as_is() -> None:
    frames = random_clip(1)
    out = interpolate(frames, 16, 32)
    np.testing.assert_array_equal(out, frames)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (2, 40), (7, 9), (33, 47), (480, 833)])
def test_any_frame_size(height: int, width: int) -> None:
    """Odd and tiny sizes (below DIS's patch size) work; flat frames cross-fade to the exact midpoint."""
    frames = np.stack([np.full((height, width, 3), 40, np.uint8), np.full((height, width, 3), 200, np.uint8)])
    out = interpolate(frames, 16, 32)
    assert out.shape == (3, height, width, 3)
    assert (out[1] == 120).all()


def test_flow_is_computed_once_per_source_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 -> 48 makes two frames per pair from one forward and one backward flow."""
    calls: list[tuple[int, int]] = []
    create = cv2.DISOpticalFlow_create

    class CountingDIS:
        def __init__(self, preset: int) -> None:
            self._dis = create(preset)

        def calc(self, gray0: np.ndarray, gray1: np.ndarray, flow: None) -> np.ndarray:
            calls.append((int(gray0.sum()), int(gray1.sum())))
            return self._dis.calc(gray0, gray1, flow)

    monkeypatch.setattr(cv2, "DISOpticalFlow_create", CountingDIS)
    interpolate(random_clip(5, 40, 48), 16, 48)
    assert len(calls) == 2 * 4
    assert len(set(calls)) == 2 * 4


@pytest.mark.parametrize(
    ("src_fps", "dst_fps"), [(16, 8), (0, 32), (16, 0), (-16, 32), (float("nan"), 32), (16, float("inf"))]
)
def test_rejects_bad_rates(src_fps: float, dst_fps: float) -> None:
    with pytest.raises(ValueError, match=r"fps|frame rates"):
        interpolate(random_clip(3), src_fps, dst_fps)
    with pytest.raises(ValueError, match=r"fps|frame rates"):
        interpolated_count(3, src_fps, dst_fps)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((0, 8, 8, 3), np.uint8),
        np.zeros((2, 8, 8), np.uint8),
        np.zeros((2, 8, 8, 4), np.uint8),
        np.zeros((2, 8, 8, 3), np.float32),
    ],
)
def test_rejects_bad_frames(frames: np.ndarray) -> None:
    with pytest.raises(ValueError, match="FxHxWx3 uint8"):
        interpolate(frames, 16, 32)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return Scene(193, 321)  # odd on purpose


def test_2x_recovers_held_out_frames(scene: Scene) -> None:
    """Interpolating the even frames 2x must come close to the true odd frames, far closer than repeating
    or cross-fading; on the moving object too, which moves against the camera's pan."""
    full = scene.clip(17)
    kept, truth = full[::2], full[1::2]
    made = interpolate(kept, 16, 32)[1::2]
    ours, repeat, blend = psnr(made, truth), psnr(kept[:-1], truth), psnr(blend_at(kept[:-1], kept[1:], 0.5), truth)
    report = f"PSNR ours {ours:.2f} dB, frame repetition {repeat:.2f} dB, 50/50 blend {blend:.2f} dB"
    assert ours > repeat + 10, report
    assert ours > blend + 8, report

    on_object = np.stack([scene.object_mask(t) for t in range(1, 17, 2)])
    ours_obj = psnr(made[on_object], truth[on_object])
    blend_obj = psnr(blend_at(kept[:-1], kept[1:], 0.5)[on_object], truth[on_object])
    assert ours_obj > blend_obj + 6, f"on the object: PSNR ours {ours_obj:.2f} dB, 50/50 blend {blend_obj:.2f} dB"


def test_3x_places_frames_at_their_times(scene: Scene) -> None:
    """At t = 1/3 and 2/3 the intermediate flows and blend weights are asymmetric, which 2x cannot check:
    each synthesized frame must match its own time better than the other one's."""
    full = scene.clip(19)
    kept = full[::3]
    out = interpolate(kept, 16, 48)
    for phase in (1, 2):
        made, truth = out[phase::3], full[phase::3]
        t = phase / 3
        ours = psnr(made, truth)
        blend = psnr(blend_at(kept[:-1], kept[1:], t), truth)
        nearest = psnr(kept[:-1] if t < 0.5 else kept[1:], truth)
        report = f"t={t:.2f}: PSNR ours {ours:.2f} dB, nearest frame {nearest:.2f} dB, blend {blend:.2f} dB"
        assert ours > max(nearest, blend) + 6, report
        other = full[3 - phase :: 3]
        assert ours > psnr(made, other) + 6, report


def test_blend_weights_follow_time() -> None:
    """A still picture brightening (a fade): whatever the flow, the frame at t must mix its neighbours
    (1 - t, t), so each in-between frame has its own time's brightness, not its mirror's."""
    picture = natural_texture(96, 128, np.random.default_rng(3))
    full = np.stack([np.clip(picture * (0.4 + 0.1 * k) + 0.5, 0, 255).astype(np.uint8) for k in range(10)])
    kept = full[::3]
    out = interpolate(kept, 16, 48)
    for phase in (1, 2):
        made = out[phase::3]
        ours, mirror = psnr(made, full[phase::3]), psnr(made, full[3 - phase :: 3])
        report = f"t={phase}/3: PSNR {ours:.2f} dB, against the frame at t={3 - phase}/3 {mirror:.2f} dB"
        assert ours > 40 and ours > mirror + 10, report


def test_content_entering_or_leaving_comes_from_the_frame_that_shows_it() -> None:
    """A pan of 10 px between source frames: the strip entering on the right exists only in the later frame
    and the strip leaving on the left only in the earlier one; the other side's sample there is merely its
    replicated border."""
    picture = natural_texture(120, 300, np.random.default_rng(5))
    full = np.stack([np.clip(picture[10:106, 5 * k : 5 * k + 128] + 0.5, 0, 255).astype(np.uint8) for k in range(9)])
    kept, truth = full[::2], full[1::2]
    made = interpolate(kept, 16, 32)[1::2]
    for side in (np.s_[..., :5, :], np.s_[..., -5:, :]):
        assert psnr(made[side], truth[side]) > 35, f"PSNR at the edge {psnr(made[side], truth[side]):.2f} dB"


@pytest.mark.parametrize(("num_cpus", "threads"), [(0.5, 1), (1, 1), (2.5, 2), (4, 4)])
def test_replica_bounds_opencv_threads_by_its_cpus(
    monkeypatch: pytest.MonkeyPatch, num_cpus: float, threads: int
) -> None:
    """An Interpolator replica runs OpenCV on the CPUs Ray reserved for it, not on every core of the node."""
    import ray

    from deployments.interpolator import Interpolator

    class Context:
        def get_assigned_resources(self) -> dict[str, float]:
            return {"CPU": num_cpus}

    monkeypatch.setattr(ray, "get_runtime_context", Context)
    before = cv2.getNumThreads()
    try:
        Interpolator.func_or_class()
        assert cv2.getNumThreads() == threads
    finally:
        cv2.setNumThreads(before)
