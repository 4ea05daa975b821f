"""Long-video arithmetic and the conditioning of each window, without Ray: pure numpy over real requests."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest

from deployments.plan import StageFailed, stage
from pipelines.conditioning import GRAY, binary_mask, fit_clip, grid_ceil, keyframes, pad_frames
from pipelines.extend import extended_length, extension_request, extensions_to_cover, segments
from pipelines.request import GenerationCancelled, GenerationRequest
from pipelines.variants import Task


def base(window: int = 81) -> GenerationRequest:
    return GenerationRequest(task=Task.VACE, prompt="a long walk", width=64, height=32, num_frames=window,
                             num_inference_steps=4, guidance_scale=5.0, seed=7, flow_shift=3.0)


def frames(n: int, h: int = 32, w: int = 64) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_wan_windows_make_81_plus_66_per_extension() -> None:
    assert extended_length(81, 15, 2) == 81 + 66 * 2 == 213
    parts = segments(81, 15, 2)
    assert [(s.name, s.start, s.stop) for s in parts] == [
        ("initial", 0, 81), ("extension_001", 81, 147), ("extension_002", 147, 213)]
    assert extensions_to_cover(81, 81, 15) == 0
    assert extensions_to_cover(82, 81, 15) == 1
    assert extensions_to_cover(213, 81, 15) == 2
    assert extensions_to_cover(214, 81, 15) == 3


def test_a_vace_window_starts_with_the_last_overlap_frames_kept() -> None:
    so_far = frames(81)
    request, new = extension_request(base(), so_far, 1, 81, 15, "vace")
    assert request.task is Task.VACE and request.num_frames == 81 and request.seed == 8
    assert np.array_equal(request.video[:15], so_far[-15:])
    assert (request.mask[:15] == 0).all(), "context frames are kept"
    assert (request.mask[15:] == 255).all() and (request.video[15:] == GRAY).all(), "the rest is generated"
    assert (new.start, new.stop) == (15, 81)


def test_an_edit_window_follows_the_source_and_its_mask() -> None:
    source, mask = frames(120), np.zeros((120, 32, 64), np.uint8)
    mask[:, :, 32:] = 255
    so_far = frames(81)
    request, _ = extension_request(base(), so_far, 1, 81, 15, "vace", source, mask)
    # window 1 covers output frames 66..146: context 66..80, then source frames 81..119, then gray
    assert np.array_equal(request.video[15:54], source[81:120])
    assert np.array_equal(request.mask[15:54], mask[81:120])
    assert (request.video[54:] == GRAY).all() and (request.mask[54:] == 255).all()


def test_an_i2v_window_continues_from_the_last_frame() -> None:
    so_far = frames(17)
    request, new = extension_request(base(17), so_far, 2, 17, 5, "i2v")
    assert request.task is Task.I2V and request.video is None and request.mask is None
    assert np.array_equal(request.image, so_far[-1])
    assert request.num_frames == grid_ceil(17 - 5 + 1) == 13
    assert new.stop - new.start == 12, "the same arithmetic as VACE: window - overlap new frames"


def test_grid_and_padding() -> None:
    assert [grid_ceil(n) for n in (1, 2, 5, 6, 32, 81)] == [1, 5, 5, 9, 33, 81]
    clip = frames(3)
    padded = pad_frames(clip, 5)
    assert len(padded) == 5 and np.array_equal(padded[3], clip[-1]) and np.array_equal(padded[4], clip[-1])


def test_fit_crop_fills_the_frame_and_pad_marks_the_border() -> None:
    clip = frames(2, h=40, w=40)
    cropped, mask = fit_clip(clip, None, 64, 32, "crop")
    assert cropped.shape == (2, 32, 64, 3) and mask is None
    padded, region = fit_clip(clip, None, 64, 32, "pad")
    assert padded.shape == (2, 32, 64, 3)
    assert (region[:, :, 16:48] == 0).all(), "the source, scaled to 32x32 and centred, is kept"
    assert (region[:, :, :16] == 255).all() and (region[:, :, 48:] == 255).all(), "the border is generated"
    assert (padded[:, :, :16] == GRAY).all()


def test_masks_and_keyframes() -> None:
    white = np.full((1, 4, 4, 3), 255, np.uint8)
    assert (binary_mask(white) == 255).all() and (binary_mask(white, invert=True) == 0).all()
    first, last = frames(1)[0], frames(2)[1]
    video, mask = keyframes(9, 64, 32, first, last)
    assert np.array_equal(video[0], first) and np.array_equal(video[-1], last)
    assert mask[0].max() == 0 and mask[-1].max() == 0 and (mask[1:-1] == 255).all()
    video, mask = keyframes(9, 64, 32, None, last)
    assert (video[0] == GRAY).all() and mask[0].min() == 255 and mask[-1].max() == 0


def test_a_stage_names_its_failures_and_passes_cancellation_through() -> None:
    @stage("encode")
    async def broken() -> None:
        raise ValueError("no frames")

    @stage("generate")
    async def cancelled() -> None:
        raise GenerationCancelled("stop")

    with pytest.raises(StageFailed) as failed:
        asyncio.run(broken())
    assert (failed.value.stage, failed.value.message) == ("encode", "ValueError: no frames")
    again = pickle.loads(pickle.dumps(failed.value))  # it crosses Ray processes
    assert (again.stage, str(again)) == ("encode", "encode: ValueError: no frames")
    with pytest.raises(GenerationCancelled):
        asyncio.run(cancelled())
