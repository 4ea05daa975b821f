"""The `wan-serve` console script, run as a user runs it, against the shared app: each command, the progress bar
from the event stream, the files it saves (decoded), and exit codes that say how things ended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.media import mp4, png, probe
from tests.support.cli import wan


def test_generate_wait_shows_progress_and_saves_the_mp4(serve_url: str, tmp_path: Path) -> None:
    out = tmp_path / "lighthouse.mp4"
    r = wan(serve_url, "generate", "a lighthouse", "--frames", "9", "--steps", "6", "--seed", "3", "--wait", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "t2v" in r.stdout and f"-> {out}" in r.stdout
    assert "6/6 steps" in r.stderr and "completed" in r.stderr, f"no progress bar from the events: {r.stderr}"
    frames, fps, _ = probe(out.read_bytes())
    assert frames.shape == (9, 32, 64, 3) and fps == 16  # tiny-t2v's default size and rate
    video_id = r.stdout.split()[0]
    status = wan(serve_url, "status", video_id)
    assert status.returncode == 0 and "completed" in status.stdout and "100" in status.stdout
    assert video_id in wan(serve_url, "list", "--limit", "5").stdout
    thumb = tmp_path / "thumb.jpg"
    assert wan(serve_url, "download", video_id, "--variant", "thumbnail", "-o", thumb).returncode == 0
    width, height = Image.open(thumb).size
    assert width == 2 * height, "the thumbnail keeps the 64x32 video's shape"


def test_generate_from_two_frames_and_edit_a_clip(serve_url: str, tmp_path: Path) -> None:
    first, last, clip = tmp_path / "first.png", tmp_path / "last.png", tmp_path / "clip.mp4"
    first.write_bytes(png(seed=1))
    last.write_bytes(png(seed=2))
    clip.write_bytes(mp4(frames=9))
    r = wan(serve_url, "generate", "between", "--image", first, "--last-image", last, "--frames", "5", "--wait",
            "-o", tmp_path / "flf.mp4")
    assert r.returncode == 0 and "flf2v" in r.stdout, r.stdout + r.stderr
    r = wan(serve_url, "edit", clip, "make it night", "--strength", "0.6", "--wait", "-o", tmp_path / "edit.mp4")
    assert r.returncode == 0, r.stdout + r.stderr
    frames, _, _ = probe((tmp_path / "edit.mp4").read_bytes())
    assert frames.shape[0] == 9, "the edit keeps the clip's length"


def test_image_saves_a_png(serve_url: str, tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    r = wan(serve_url, "image", "a cat", "--size", "32x32", "--steps", "3", "-o", out)
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)


def test_a_cancelled_job_exits_4_and_a_refusal_exits_2(serve_url: str) -> None:
    r = wan(serve_url, "generate", "long", "--frames", "81", "--steps", "200")
    video_id = r.stdout.split()[0]
    assert r.returncode == 0 and video_id.startswith("video_")
    cancelled = wan(serve_url, "cancel", video_id)
    assert cancelled.returncode == 0 and "cancel" in cancelled.stdout
    assert wan(serve_url, "watch", video_id).returncode == 4
    assert wan(serve_url, "status", video_id).returncode == 4
    refused = wan(serve_url, "generate", "x", "--size", "7x7")
    assert refused.returncode == 2 and "size" in refused.stderr
    unknown = wan(serve_url, "status", "video_nope")
    assert unknown.returncode == 2 and "video_id" in unknown.stderr


def test_models_and_queue_tables(serve_url: str) -> None:
    models = wan(serve_url, "models")
    assert models.returncode == 0 and "tiny-t2v" in models.stdout and "1 running" in models.stdout
    queue = wan(serve_url, "queue")
    assert queue.returncode == 0 and "tiny-a14b" in queue.stdout


@pytest.mark.parametrize("url", ["http://127.0.0.1:9"])
def test_no_service_exits_5(url: str) -> None:
    r = wan(url, "list")
    assert r.returncode == 5 and "cannot reach" in r.stderr


def test_the_cli_imports_neither_torch_nor_ray() -> None:
    code = "import sys, wan_client.cli; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
