"""Frame interpolation: speed and quality of `pipelines/interpolate.py` against simple and ffmpeg baselines.

    python -m benchmarks.interpolation [--width 832] [--height 480] [--frames 33] [--runs 3] [--motion 1 2.5]

For each motion scale, the rendered scene of tests/test_interpolate.py (a camera panning and zooming over a
natural-looking texture, an object crossing it the other way; scale 1 = a 2.5 px/frame pan and a 3.7 px/frame
object, 2.5 = 6 and 9 px) is rendered at 2 * frames - 1 times; the even frames go in at 16 fps and every
method makes 32 fps from them. Its odd frames are the held-out truth. Methods:

- ours: `interpolate` with the default DIS preset, and rows with the other presets (how the default was chosen)
- repeat: each frame shown twice (the in-between frame is its earlier neighbour)
- blend: a 50/50 cross-fade of the two neighbours
- minterpolate: ffmpeg's motion-compensated mode (mi_mode=mci, other options at their defaults, scene-change
  detection off) through PyAV's filter graph, in yuv444p so chroma is not subsampled

PSNR is over all pixels of all held-out frames, and over the pixels the moving object covers. Speed is output
frames per second (wall clock) and CPU time per output frame, medians of `runs` timed runs after one warm-up.
Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction

import av
import cv2
import numpy as np

from pipelines import interpolate as interpolation
from tests.test_interpolate import Scene, psnr

SRC_FPS, DST_FPS = 16, 32
PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@contextmanager
def dis_preset(preset: int) -> Iterator[None]:
    """Run `interpolate` with another DIS preset for the duration."""
    default = interpolation.DIS_PRESET
    interpolation.DIS_PRESET = preset
    try:
        yield
    finally:
        interpolation.DIS_PRESET = default


def ours(preset: int) -> Callable[[np.ndarray], np.ndarray]:
    def run(frames: np.ndarray) -> np.ndarray:
        with dis_preset(preset):
            return interpolation.interpolate(frames, SRC_FPS, DST_FPS)

    return run


def repeat(frames: np.ndarray) -> np.ndarray:
    return np.repeat(frames, 2, axis=0)[:-1]


def blend(frames: np.ndarray) -> np.ndarray:
    out = np.repeat(frames, 2, axis=0)[:-1]
    out[1::2] = (frames[:-1].astype(np.uint16) + frames[1:] + 1) // 2
    return out


def minterpolate(frames: np.ndarray) -> np.ndarray:
    """ffmpeg's minterpolate at 2x. It holds back its last output until it sees a frame beyond it, so one copy
    of the last frame is pushed after the clip and the output is cut to the length ours has."""
    time_base = Fraction(1, SRC_FPS)
    graph = av.filter.Graph()
    graph.link_nodes(
        graph.add_buffer(width=frames.shape[2], height=frames.shape[1], format="rgb24", time_base=time_base),
        graph.add("format", "yuv444p"),
        graph.add("minterpolate", f"fps={DST_FPS}:mi_mode=mci:scd=none"),
        graph.add("format", "rgb24"),
        graph.add("buffersink"),
    ).configure()
    out: list[np.ndarray] = []
    for pts, frame in enumerate([*frames, frames[-1], None]):
        if frame is None:
            graph.vpush(None)
        else:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = pts, time_base
            graph.vpush(video_frame)
        while True:
            try:
                out.append(graph.vpull().to_ndarray(format="rgb24"))
            except (BlockingIOError, EOFError):
                break
    return np.stack(out[: 2 * len(frames) - 1])


def measure(method: Callable[[np.ndarray], np.ndarray], kept: np.ndarray, runs: int) -> tuple[float, float, np.ndarray]:
    """Median output frames per second (wall clock) and CPU ms per output frame (all of this process's threads,
    so steadier than the wall clock on a busy machine) over `runs` runs after a warm-up, and the output."""
    out = method(kept)
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = method(kept)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    assert out.shape == (2 * len(kept) - 1, *kept.shape[1:]), out.shape
    return len(out) / statistics.median(wall), 1000 * statistics.median(cpu) / len(out), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=33, help="input frames (the output has 2 * frames - 1)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--motion", type=float, nargs="+", default=[1.0, 2.5], help="motion scales, 1 = slow")
    parser.add_argument("--smoke", action="store_true", help="a few seconds at tiny sizes: that it still runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.width, args.height, args.frames, args.runs, args.motion = 128, 64, 5, 1, [1.0]

    default = next(name for name, preset in PRESETS.items() if preset == interpolation.DIS_PRESET)
    methods: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        f"ours (DIS {default}, default)": ours(PRESETS[default]),
        **{f"ours (DIS {name})": ours(preset) for name, preset in PRESETS.items() if name != default},
        "repeat": repeat,
        "blend 50/50": blend,
        "minterpolate mci": minterpolate,
    }
    print(
        f"wan-serve frame interpolation: {args.width}x{args.height}, {args.frames} frames at {SRC_FPS} fps -> "
        f"{2 * args.frames - 1} at {DST_FPS} fps; {args.runs} runs after 1 warm-up; {cv2.getNumThreads()} "
        "OpenCV threads"
    )
    for motion in args.motion:
        scene = Scene(
            args.height, args.width, pan=(2.3 * motion, -1.1 * motion), zoom=0.002 * motion,
            object_velocity=(3.4 * motion, 1.5 * motion),
        )
        full = scene.clip(2 * args.frames - 1)
        kept, truth = full[::2], full[1::2]
        on_object = np.stack([scene.object_mask(t) for t in range(1, len(full), 2)])
        print(f"\nmotion x{motion:g}: PSNR of the {len(truth)} held-out frames (all pixels / the moving object)")
        print(f"{'method':30} {'out fps':>8} {'CPU ms/frame':>13} {'PSNR dB':>8} {'object dB':>10}")
        for name, method in methods.items():
            fps, cpu_ms, out = measure(method, kept, args.runs)
            made = out[1::2]
            print(
                f"{name:30} {fps:8.1f} {cpu_ms:13.2f} {psnr(made, truth):8.2f} "
                f"{psnr(made[on_object], truth[on_object]):10.2f}"
            )


if __name__ == "__main__":
    main()
