"""Convert a Wan checkpoint once into the Diffusers folder a replica loads fastest: bfloat16 weights (the VAE and
CLIP image encoder in float32, as they run), with the source and its pinned revision recorded beside them.

The Wan repos keep float32 weights, so a cold 14B replica reads about 80 GB and an A14B about 125 GB to use half
of it; the converted folder is what it keeps. Run it once per model on a host with the disk and RAM for it:

    wan-serve-convert Wan-AI/Wan2.1-T2V-14B-Diffusers /models/wan/Wan2.1-T2V-14B --revision <commit>

and point the model's `weights` at the output. Without `--revision` the repo's current commit is pinned.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import snapshot_download

from pipelines.loading import DTYPES, component_dtypes

RECORD = "wan-serve-source.json"
log = logging.getLogger(__name__)


def resolve(source: str, revision: str | None) -> tuple[str, str | None]:
    """The local folder of `source` (a directory, or a hub id downloaded at `revision`) and the commit it is."""
    if Path(source).is_dir():
        return source, None
    folder = snapshot_download(source, revision=revision)
    return folder, Path(folder).name  # the snapshot folder is named after its commit hash


def convert(source: str, output: str | Path, revision: str | None = None, dtype: str = "bfloat16") -> Path:
    """Load `source` (at `revision`) in `dtype`, keep the VAE and CLIP in float32, and save it to `output`."""
    folder, commit = resolve(source, revision)
    dtypes = component_dtypes(folder, DTYPES[dtype])
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtypes)
    out = Path(output)
    pipe.save_pretrained(out, safe_serialization=True)
    record = {"source": source, "revision": commit, "dtype": dtype,
              "float32": sorted(name for name, d in dtypes.items() if name != "default" and d == torch.float32)}
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("converted %s@%s to %s in %s", source, commit, dtype, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wan-serve-convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a hub id (e.g. Wan-AI/Wan2.1-T2V-14B-Diffusers) or a local Diffusers folder")
    parser.add_argument("output", help="the folder to write; set the model's `weights` to it")
    parser.add_argument("--revision", help="the hub commit (or tag) to convert; default: the current one, pinned")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with torch.inference_mode():
        convert(args.source, args.output, args.revision, args.dtype)


if __name__ == "__main__":
    main()
