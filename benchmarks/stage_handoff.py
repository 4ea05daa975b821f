"""Stage hand-off: what it costs to move one clip of frames from one deployment to another.

    python -m benchmarks.stage_handoff [--runs 10] [--frames 81] [--size 832x480] [--real-job-s 240]
                                       [--address ADDRESS]

The FlowRunner hands the generator's DeploymentResponse (an FxHxWx3 uint8 array) to the encoder as a
top-level argument, so Ray moves the array through its object store from one replica to the other. This
measures that move for one 81-frame 832x480 RGB clip (~97 MB) and puts it in proportion to the work of a job.

(a) hand-off: consumer.take.remote(producer.make.remote(shape)). The producer returns a clip it made once
    and cached, so making it is outside the timing; the consumer reads every byte (a CRC32) and returns it.
(b) baseline: consumer.take_own.remote(shape): the consumer checksums the same clip, made and cached in its
    own replica. (a) - (b) is the hand-off: one more call, the copy into the object store, the read back.
(c) control: (a) and (b) with a 1-frame 16x16 clip, so the fixed cost of the extra call can be told apart
    from the cost of the bytes.
Both paths run alternately, after two warm-ups each; medians are compared.

The flow it is put against: tiny-t2v at that size (generate with its default 4 steps, then the MP4 at
16 fps), in this process with one torch thread, as a generator replica with a fractional `num_cpus` gets.
The tiny twin only has the real architecture, so its time says little about a real model's; the share of a
real Wan2.1-T2V-1.3B job uses a published figure instead (`--real-job-s`, see REAL_JOB).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import zlib
from collections.abc import Callable

import numpy as np
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from ray import serve
from ray.serve.handle import DeploymentHandle

from benchmarks.serving_overhead import add_cluster_args, join, leave
from pipelines.generate import generate
from pipelines.loading import LoadedModel, load_model
from pipelines.request import GenerationRequest
from pipelines.variants import Task, get_variant
from pipelines.video import encode_mp4

MODEL = "tiny-t2v"
SEED = 1234
PROMPT = "a red fox running through fresh snow"
CONTROL = (1, 16, 16, 3)
CALL_TIMEOUT_S = 120.0
REAL_JOB = ("Wan2.1-T2V-1.3B, 5 s of 480p (81 frames) on one RTX 4090: 'about 4 minutes' "
            "(github.com/Wan-Video/Wan2.1 README, without quantization)")

Shape = tuple[int, int, int, int]


def make_clip(shape: Shape) -> np.ndarray:
    """The same pseudo-random clip in every process: random bytes, so nothing compresses or dedups it."""
    return np.random.default_rng(SEED).integers(0, 256, size=shape, dtype=np.uint8)


def checksum(frames: np.ndarray) -> int:
    """Reads every byte: a replica gets the array as a view of the object store, paged in on first touch."""
    return zlib.crc32(frames.data)


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Producer:
    def __init__(self) -> None:
        self._clips: dict[Shape, np.ndarray] = {}

    def make(self, shape: Shape) -> np.ndarray:
        if shape not in self._clips:
            self._clips[shape] = make_clip(shape)
        return self._clips[shape]


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Consumer:
    def __init__(self) -> None:
        self._clips: dict[Shape, np.ndarray] = {}

    def take(self, frames: np.ndarray) -> int:
        return checksum(frames)

    def take_own(self, shape: Shape) -> int:
        if shape not in self._clips:
            self._clips[shape] = make_clip(shape)
        return checksum(self._clips[shape])


def tiny_model(width: int, height: int) -> LoadedModel:
    """tiny-t2v allowed to run at `width`x`height`.

    Its presets cap its size, and its transformer's rotary table covers 32 latent positions per axis
    (512 px); the real Wan models use 1024. The table is computed, not learned, so widening it changes no
    weight.
    """
    variant = dataclasses.replace(get_variant(MODEL), sizes={"size": (width, height)}, default_size="size")
    model = load_model(variant)
    transformer = model.pipeline.transformer
    config = transformer.config
    transformer.rope = WanRotaryPosEmbed(config.attention_head_dim, tuple(config.patch_size), 1024)
    return model


def time_flow(width: int, height: int, frames: int) -> tuple[float, float]:
    """Seconds to generate and to encode one job of that size with the tiny twin."""
    model = tiny_model(width, height)
    variant = model.variant
    request = GenerationRequest(
        task=Task.T2V, prompt=PROMPT, width=width, height=height, num_frames=frames,
        num_inference_steps=variant.steps, guidance_scale=variant.guidance_scale,
        guidance_scale_2=variant.guidance_scale_2, flow_shift=variant.flow_shift, seed=SEED,
    )
    start = time.perf_counter()
    clip = generate(model, request)
    generated = time.perf_counter()
    encode_mp4(clip, variant.fps)
    return generated - start, time.perf_counter() - generated


def alternate(paths: dict[str, Callable[[], int]], runs: int) -> tuple[dict[str, list[float]], set[int]]:
    """Seconds per call of each path, run in turn so that load on a shared machine hits them alike."""
    for fn in paths.values():  # warm-ups: the replicas' caches, the handles' first routing
        for _ in range(2):
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    sums: set[int] = set()
    for _ in range(runs):
        for name, fn in paths.items():
            start = time.perf_counter()
            sums.add(fn())
            times[name].append(time.perf_counter() - start)
    return times, sums


def handoff_paths(producer: DeploymentHandle, consumer: DeploymentHandle, shape: Shape) -> dict[str, Callable[[], int]]:
    return {
        "hand-off": lambda: consumer.take.remote(producer.make.remote(shape)).result(timeout_s=CALL_TIMEOUT_S),
        "baseline": lambda: consumer.take_own.remote(shape).result(timeout_s=CALL_TIMEOUT_S),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed calls per path, after two warm-ups (default 10)")
    parser.add_argument("--frames", type=int, default=81, help="frames per clip, 4k+1 (default 81)")
    parser.add_argument("--size", default="832x480", help="WIDTHxHEIGHT (default 832x480)")
    parser.add_argument("--real-job-s", type=float, default=240.0,
                        help="seconds a real Wan2.1-T2V-1.3B job takes, for its share (default 240, see REAL_JOB)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds at tiny sizes: that it still runs (CI)")
    add_cluster_args(parser, http=False)
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.frames, args.size = 2, 9, "128x64"
    width, height = map(int, args.size.split("x"))
    shape: Shape = (args.frames, height, width, 3)

    # The flow, before Ray starts, with the replica's thread count.
    torch.set_num_threads(1)
    generate_s, encode_s = time_flow(width, height, args.frames)
    flow_s = generate_s + encode_s

    join(args.address, num_cpus=2)
    serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy, so no port to share with anything else
    producer = serve.run(Producer.bind(), name="producer", route_prefix=None)
    consumer = serve.run(Consumer.bind(), name="consumer", route_prefix=None)
    clip, clip_sums = alternate(handoff_paths(producer, consumer, shape), args.runs)
    control, control_sums = alternate(handoff_paths(producer, consumer, CONTROL), args.runs)
    leave(args.address, ["producer", "consumer"])

    def median_ms(times: list[float]) -> float:
        return statistics.median(times) * 1e3

    handoff_ms = median_ms(clip["hand-off"]) - median_ms(clip["baseline"])
    call_ms = median_ms(control["hand-off"]) - median_ms(control["baseline"])
    mb = np.prod(shape) / 1e6
    print(f"wan-serve stage hand-off: one {args.frames}x{height}x{width}x3 uint8 clip ({mb:.1f} MB) between two "
          f"deployments; {args.runs} runs per path after 2 warm-ups, paths alternating")
    print("hand-off = consumer.take.remote(producer.make.remote(shape)): the clip through the object store")
    print("baseline = consumer.take_own.remote(shape): the same checksum of the same clip, made in the consumer")
    print()
    print(f"{'path':<28}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for label, times in (("clip", clip), ("control 1x16x16x3", control)):
        for name, ts in times.items():
            ms = [t * 1e3 for t in ts]
            print(f"{f'{name} ({label})':<28}{statistics.median(ms):>12.1f}{min(ms):>10.1f}{max(ms):>10.1f}")
    print()
    bytes_ms = handoff_ms - call_ms
    rate = f"{mb / bytes_ms:.1f} GB/s" if bytes_ms > 0 else "below the timer's noise"
    print(f"hand-off cost: {handoff_ms:.1f} ms per clip (hand-off - baseline); of that, the extra call alone "
          f"(control): {call_ms:.1f} ms, so the bytes: {bytes_ms:.1f} ms ({rate})")
    print(f"same clip on both paths: {'yes' if len(clip_sums) == 1 and len(control_sums) == 1 else 'no'}")
    print()
    print(f"tiny flow ({MODEL} at {width}x{height}, {args.frames} frames, {get_variant(MODEL).steps} steps, "
          f"1 torch thread): generate {generate_s:.1f} s + MP4 {encode_s:.1f} s = {flow_s:.1f} s")
    print(f"hand-off share of the tiny flow: {handoff_ms / 1e3 / flow_s:.3%}")
    print(f"assumed real job (--real-job-s): {args.real_job_s:.0f} s; the default is {REAL_JOB}")
    print(f"hand-off share of a real Wan2.1-T2V-1.3B job: {handoff_ms / 1e3 / args.real_job_s:.4%}")


if __name__ == "__main__":
    main()
