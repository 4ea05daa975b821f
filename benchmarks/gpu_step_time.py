"""GPU step time: seconds per denoising step and per job, the baseline against each speed option and their best
combination, and the throughput of two half-GPU replicas on one card against one.

    python -m benchmarks.gpu_step_time [--model Wan2.1-T2V-1.3B] [--size 832x480] [--frames 81] [--steps 10]
                                       [--runs 2] [--backend _native_cudnn] [--json PATH]
    python -m benchmarks.gpu_step_time --smoke

On a GPU the transformer and the VAE are the model's real architecture (dims from its Diffusers repo's
`transformer/config.json`; the VAE is diffusers' default `AutoencoderKLWan`, Wan 2.1's) with random weights: speed
does not depend on weight values, so no checkpoint is needed. The text encoder, which runs once per job, is a
one-layer stand-in with the real output width (4096). What a cache skips does depend on the weights: its block
evaluations are reported, and its speed-up on real weights is the one to trust. On a CPU the benchmark runs the
tiny twin and says so: those figures say nothing about a GPU.

Each configuration builds the pipeline afresh, runs one warm-up job (where compile happens), then `runs` timed
jobs; a step's time comes from the step callback (after a CUDA sync), a job's from the whole call. Replicas: one
process runs `2 * runs` jobs alone, then two processes, each capped at half the card's memory as a 0.5-GPU Serve
replica is, run `runs` jobs each at the same time; throughput is jobs per second of wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from transformers import UMT5Config, UMT5EncoderModel

from pipelines.generate import generate
from pipelines.loading import LoadedModel, load_model
from pipelines.options import CacheOptions, SpeedOptions
from pipelines.request import GenerationRequest
from pipelines.speed import apply_speed
from pipelines.tiny import build_tokenizer
from pipelines.variants import Task, get_variant

# From each model's Diffusers repo, transformer/config.json.
REAL: dict[str, dict[str, Any]] = {
    "Wan2.1-T2V-1.3B": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "Wan2.1-T2V-14B": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
}
COMMON = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


@dataclass
class Result:
    name: str
    step_s: float = float("nan")
    job_s: float = float("nan")
    blocks: int | None = None
    error: str = ""
    frames: Any = field(default=None, repr=False)


def real_size(model: str, device: torch.device) -> WanPipeline:
    """`model`'s real transformer and VAE with random weights, made on the device (bfloat16; the VAE float32)."""
    tokenizer = build_tokenizer()
    with torch.device(device):
        transformer = WanTransformer3DModel(**COMMON, **REAL[model]).to(torch.bfloat16)
        vae = AutoencoderKLWan()
        encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=256, num_layers=1,
                                              num_heads=8, pad_token_id=0, eos_token_id=1)).to(torch.bfloat16)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build(args: argparse.Namespace, speed: SpeedOptions, memory_fraction: float | None = None) -> LoadedModel:
    if args.device.type == "cpu":
        return load_model(get_variant("tiny-t2v"), device="cpu", speed=speed)
    if memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(memory_fraction, args.device)
    pipe = real_size(args.model, args.device)
    apply_speed(pipe, speed)
    return LoadedModel(variant=get_variant(args.model), pipeline=pipe, device=args.device,
                       scheduler_config=pipe.scheduler.config)


def request(args: argparse.Namespace) -> GenerationRequest:
    width, height = map(int, args.size.split("x"))
    return GenerationRequest(task=Task.T2V, prompt="a lighthouse at dusk, waves breaking", width=width, height=height,
                             num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=5.0, seed=7,
                             flow_shift=3.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, args: argparse.Namespace, speed: SpeedOptions) -> Result:
    try:
        return _measure(name, args, speed)
    except Exception as exc:  # a backend not installed, a compile that fails: a row saying so, not a crash
        return Result(name, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")


def _measure(name: str, args: argparse.Namespace, speed: SpeedOptions) -> Result:
    """One configuration: a warm-up job, then `runs` timed ones; the medians of step and job seconds."""
    model = build(args, speed)
    evaluations = [0]  # not counted under compile: the counter's hook would be a guard that recompiles every step
    for module in model.pipeline.transformer.modules() if not speed.compile else ():
        if isinstance(module, WanTransformerBlock):
            module.ffn.register_forward_hook(lambda *_: evaluations.__setitem__(0, evaluations[0] + 1))
    steps: list[float] = []
    jobs: list[float] = []
    frames = None
    stamps: list[float] = []

    def on_step(done: int, total: int) -> bool:
        sync(args.device)
        stamps.append(time.perf_counter())
        return True

    for run in range(args.runs + 1):
        stamps.clear()
        evaluations[0] = 0
        sync(args.device)
        started = time.perf_counter()
        frames = generate(model, request(args), on_step)
        sync(args.device)
        if run:  # the first is the warm-up
            jobs.append(time.perf_counter() - started)
            steps += list(np.diff(stamps))
    return Result(name, statistics.median(steps) if steps else float("nan"), statistics.median(jobs),
                  None if speed.compile else evaluations[0], frames=frames)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Against the baseline's frames: how far an option moves the output (inf: not at all)."""
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _replica(args: argparse.Namespace, jobs: int, fraction: float | None, start: Any, out: Any) -> None:
    model = build(args, SpeedOptions(), fraction)
    generate(model, request(args))  # warm-up, before the shared start
    start.wait()
    for _ in range(jobs):
        generate(model, request(args))
    out.put(time.perf_counter())


def throughput(args: argparse.Namespace, replicas: int, jobs: int) -> float:
    """Jobs per second of `replicas` processes on one device, each with `jobs` jobs (and half the memory if two).
    Each is forked from a server that imported this module once and never touched CUDA: a fresh process, without
    importing torch and diffusers again for each."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__spec__.name])
    start, out = ctx.Barrier(replicas + 1), ctx.Queue()
    fraction = 1.0 / replicas if replicas > 1 and args.device.type == "cuda" else None
    procs = [ctx.Process(target=_replica, args=(args, jobs, fraction, start, out)) for _ in range(replicas)]
    for p in procs:
        p.start()
    start.wait()
    began = time.perf_counter()
    ended = max(out.get(timeout=3600) for _ in procs)
    for p in procs:
        p.join()
    return replicas * jobs / (ended - began)


def configurations(args: argparse.Namespace) -> dict[str, SpeedOptions]:
    first_block = CacheOptions(kind="first_block", options={"threshold": 0.05})
    taylorseer = CacheOptions(kind="taylorseer", options={})
    return {"baseline": SpeedOptions(), f"attention {args.backend}": SpeedOptions(attention_backend=args.backend),
            "compile (regional)": SpeedOptions(compile=True), "cache first_block 0.05": SpeedOptions(cache=first_block),
            "cache taylorseer": SpeedOptions(cache=taylorseer), "vae tiling": SpeedOptions(vae_tiling=True)}


def best(args: argparse.Namespace, results: dict[str, Result], options: dict[str, SpeedOptions]) -> SpeedOptions:
    """Every option that beat the baseline's job time by 2 %, together; of compile and the caches, which do not
    combine, the fastest."""
    base = results["baseline"].job_s
    winners = [n for n, r in results.items() if n != "baseline" and not r.error and r.job_s < base * 0.98]
    exclusive = [n for n in winners if n.startswith(("cache", "compile"))]
    fastest = sorted(exclusive, key=lambda n: results[n].job_s)[:1]
    merged: dict[str, Any] = {}
    for name in [n for n in winners if n not in exclusive] + fastest:
        merged |= options[name].model_dump(exclude_defaults=True)
    return SpeedOptions(**merged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="Wan2.1-T2V-1.3B", choices=sorted(REAL))
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--backend", default=None, help="default: _native_cudnn on a GPU, _native_math on a CPU")
    parser.add_argument("--json", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny twin, 2 steps, 1 run: checks it still works")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    args.device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    if args.device.type == "cpu" or args.smoke:
        args.size, args.frames = "64x32", 9
        args.steps, args.runs = (2, 1) if args.smoke else (args.steps, args.runs)
    args.backend = args.backend or ("_native_cudnn" if args.device.type == "cuda" else "_native_math")
    subject = f"{args.model} at its real size, random weights" if args.device.type == "cuda" else \
        "the tiny twin tiny-t2v on a CPU: these figures say nothing about a GPU"
    print(f"wan-serve GPU step time: {subject}")
    print(f"{args.size}, {args.frames} frames, {args.steps} steps, CFG on; {args.runs} timed job(s) after 1 warm-up; "
          f"device {torch.cuda.get_device_name(args.device) if args.device.type == 'cuda' else 'cpu'}\n")
    options = configurations(args)
    results = {name: measure(name, args, speed) for name, speed in options.items()}
    combined = best(args, results, options)
    results["best combination"] = measure("best combination", args, combined)
    base = results["baseline"]
    print(f"{'configuration':28} {'s/step':>9} {'s/job':>9} {'vs base':>8} {'blocks run':>11} {'PSNR dB':>8}")
    for r in results.values():
        if r.error:
            print(f"{r.name:28} failed: {r.error}")
            continue
        blocks = "-" if r.blocks is None else str(r.blocks)
        print(f"{r.name:28} {r.step_s:9.4f} {r.job_s:9.3f} {base.job_s / r.job_s:7.2f}x {blocks:>11} "
              f"{psnr(r.frames, base.frames):8.1f}")
    print(f"best combination = {combined.model_dump(exclude_defaults=True)}")
    jobs = args.runs
    one, two = throughput(args, 1, 2 * jobs), throughput(args, 2, jobs)
    print(f"\nreplicas on one {'card' if args.device.type == 'cuda' else 'CPU'}: one {one:.3f} jobs/s, "
          f"two half-{'GPU' if args.device.type == 'cuda' else 'CPU'} {two:.3f} jobs/s: {two / one:.2f}x")
    shapes = {r.frames.shape for r in results.values() if r.frames is not None}
    print(f"every configuration made the same frame shape: {'yes' if len(shapes) == 1 else 'no'}")
    if args.json:
        rows = [{k: v for k, v in vars(r).items() if k != "frames"} | {"psnr": psnr(r.frames, base.frames)}
                for r in results.values() if not r.error]
        with open(args.json, "w") as f:
            json.dump({"subject": subject, "rows": rows, "replicas": {"one": one, "two": two}}, f, indent=2)


if __name__ == "__main__":
    main()
