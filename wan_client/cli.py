"""`wan-serve`: make, watch and fetch Wan videos from a terminal.

Exit codes say how it ended, so scripts can branch on them: see `Exit`.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from wan_client.client import Client, ServiceError, media_file


class Exit(IntEnum):
    OK = 0  # done; a waited-for job completed
    FAILED = 1  # the job failed
    REFUSED = 2  # the request was refused (a bad field, an unknown id) or the command line was wrong
    AUTH = 3  # no key, or a key the service does not know
    CANCELLED = 4  # the job was cancelled
    UNAVAILABLE = 5  # the service could not be reached, or failed (5xx)
    BUSY = 6  # the queue is full (429): try again later


OUTCOMES = {"completed": Exit.OK, "failed": Exit.FAILED, "cancelled": Exit.CANCELLED}
app = typer.Typer(help="Make, watch and fetch Wan videos with a wan-serve service.", no_args_is_help=True,
                  add_completion=False,
                  pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)
_state: dict[str, Client] = {}


@contextmanager
def _service() -> Iterator[Client]:
    """The client; a refusal or no answer is printed and ends the command with the exit code it means."""
    try:
        yield _state["client"]
    except ServiceError as exc:
        where = f" ({exc.param})" if exc.param else ""
        err.print(f"[red]error{where}:[/red] {exc.message}")
        if exc.status is None or exc.status >= 500:
            raise typer.Exit(Exit.UNAVAILABLE) from None
        raise typer.Exit({401: Exit.AUTH, 403: Exit.AUTH, 429: Exit.BUSY}.get(exc.status, Exit.REFUSED)) from None


@app.callback()
def main(
    base_url: Annotated[str, typer.Option(envvar="WAN_BASE_URL", help="the service")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="WAN_API_KEY", help="a bearer key", show_default=False)] = None,
) -> None:
    _state["client"] = Client(base_url, api_key)


def _path(kind: str, job_id: str) -> str:
    return f"/v1/images/batches/{job_id}" if kind == "batch" else f"/v1/videos/{job_id}"


def _wait(client: Client, job: dict[str, Any], output: Path | None) -> Exit:
    """A live bar (steps, stage, ETA) from the job's events; then the file saved and the exit code of its end."""
    kind = "batch" if job["id"].startswith("batch_") else "video"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeRemainingColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("queued", total=job.get("total_steps") or None)
        final: dict[str, Any] = job
        for event in client.events(f"{_path(kind, job['id'])}/events"):
            data = event.data
            if event.final:
                final = data
                done = bar.tasks[0].total if data["status"] == "completed" else data.get("step")
                bar.update(task, description=data["status"], completed=done or 0)
                break
            place = f" #{data['queue_position']}" if data.get("queue_position") else ""
            bar.update(task, total=data["total_steps"], completed=data["step"],
                       description=f"{data['status']}{place} {data.get('stage') or ''}".rstrip())
    status = final["status"]
    if status != "completed":
        error = final.get("error") or {}
        err.print(f"[red]{job['id']} {status}[/red]: {error.get('message', '')}")
        return OUTCOMES.get(status, Exit.FAILED)
    if kind == "video":
        target = output or Path(f"{job['id']}.mp4")
        size = client.download(f"/v1/videos/{job['id']}/content", target)
        out.print(f"[green]completed[/green] {job['id']} -> {target} ({size / 1e6:.2f} MB)")
    else:
        out.print(f"[green]completed[/green] {job['id']}")
    return Exit.OK


def _submit(fields: dict[str, Any], files: list, wait: bool, output: Path | None) -> None:
    with _service() as client:
        job = client.create_video(fields, files)
        out.print(f"{job['id']} {job['status']} ({job['model']}, {job['task']}, {job['size']}, {job['seconds']} s)")
        code = _wait(client, job, output) if wait else Exit.OK
    raise typer.Exit(code)


Prompt = Annotated[str, typer.Argument(help="what to make")]
Model = Annotated[str | None, typer.Option(help="a served model; default: the service's choice for the task")]
Size = Annotated[str | None, typer.Option(help='"WxH" or a preset name such as 480p')]
Seconds = Annotated[float | None, typer.Option(help="length; or --frames")]
Frames = Annotated[int | None, typer.Option("--frames", help="number of frames")]
Seed = Annotated[int | None, typer.Option(help="for a reproducible video")]
Steps = Annotated[int | None, typer.Option("--steps", help="denoising steps")]
JobType = Annotated[str | None, typer.Option(help="image_fast, image_high, video_fast, video_high, ...")]
Wait = Annotated[bool, typer.Option("--wait", help="show a progress bar until it ends, then save the MP4")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="where --wait saves it")]
File = Annotated[Path | None, typer.Option(exists=True, dir_okay=False, show_default=False)]


@app.command()
def generate(prompt: Prompt, image: File = None, last_image: File = None, model: Model = None, size: Size = None,
             seconds: Seconds = None, frames: Frames = None, seed: Seed = None, steps: Steps = None,
             job_type: JobType = None, negative_prompt: Annotated[str | None, typer.Option()] = None,
             wait: Wait = False, output: Output = None) -> None:
    """A video from text; from an image with --image; between two frames with --image and --last-image."""
    if last_image and not image:
        raise typer.BadParameter("--last-image needs --image, the first frame", param_hint="--last-image")
    files = [media_file(f, p) for f, p in (("input_reference", image), ("last_image", last_image)) if p]
    _submit(dict(prompt=prompt, model=model, size=size, seconds=seconds, num_frames=frames, seed=seed,
                 num_inference_steps=steps, job_type=job_type, negative_prompt=negative_prompt), files, wait, output)


@app.command()
def edit(video: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the clip to edit")],
         prompt: Prompt, mask: File = None, reference: File = None,
         strength: Annotated[float | None, typer.Option(help="how much to change, 0-1")] = None,
         model: Model = None, seed: Seed = None, steps: Steps = None, wait: Wait = False,
         output: Output = None) -> None:
    """Upload a clip and edit it as the prompt says (with a --mask: only where it is white)."""
    files = [media_file(f, p) for f, p in (("video", video), ("mask", mask), ("reference_image", reference)) if p]
    _submit(dict(prompt=prompt, model=model, seed=seed, num_inference_steps=steps, denoise_strength=strength),
            files, wait, output)


@app.command()
def image(prompt: Prompt, model: Model = None, size: Size = None, seed: Seed = None, steps: Steps = None,
          output: Annotated[Path, typer.Option("--output", "-o")] = Path("image.png")) -> None:
    """One image, made while you wait, saved as PNG."""
    body = {k: v for k, v in dict(prompt=prompt, model=model, size=size, seed=seed, num_inference_steps=steps,
                                  response_format="b64_json").items() if v is not None}
    with _service() as client:
        answer = client.call("POST", "/v1/images/generations", json=body, timeout=None)
    output.write_bytes(base64.b64decode(answer["data"][0]["b64_json"]))
    out.print(f"[green]saved[/green] {output}")


def _job(job_id: str) -> dict[str, Any]:
    kind = "batch" if job_id.startswith("batch_") else "video"
    with _service() as client:
        return client.call("GET", _path(kind, job_id))


JobId = Annotated[str, typer.Argument(help="a video_... or batch_... id")]


@app.command()
def status(job_id: JobId) -> None:
    """A job's state; the exit code says how it ended (0 also while it runs)."""
    job = _job(job_id)
    table = Table(show_header=False, box=None)
    for name in ("id", "status", "progress", "model", "task", "size", "seconds", "step", "total_steps", "stage",
                 "queue_position", "seed"):
        if job.get(name) is not None:
            table.add_row(name, str(job[name]))
    if job.get("error"):
        table.add_row("error", f"{job['error']['code']}: {job['error']['message']}")
    out.print(table)
    raise typer.Exit(OUTCOMES.get(job["status"], Exit.OK))


@app.command()
def watch(job_id: JobId, output: Output = None) -> None:
    """A live progress bar until the job ends; a completed video is saved."""
    job = _job(job_id)
    with _service() as client:
        code = _wait(client, job, output)
    raise typer.Exit(code)


@app.command()
def download(job_id: JobId, output: Output = None,
             variant: Annotated[str, typer.Option(help="video, thumbnail, or an asset's name")] = "video") -> None:
    """A completed video (or its thumbnail, or any of its assets) to a file."""
    suffix = ".jpg" if variant == "thumbnail" else ".mp4"
    target = output or Path(f"{job_id}{'' if variant == 'video' else '.' + variant}{suffix}")
    try:
        with _service() as client:
            size = client.download(f"/v1/videos/{job_id}/content", target, {"variant": variant})
    except typer.Exit:
        target.unlink(missing_ok=True)
        raise
    out.print(f"{target} ({size / 1e6:.2f} MB)")


@app.command("list")
def list_videos(limit: Annotated[int, typer.Option(min=1, max=100)] = 20) -> None:
    """Your newest videos."""
    with _service() as client:
        videos = client.call("GET", "/v1/videos", params={"limit": limit})["data"]
    rows = [(v["id"], v["status"] if v["status"] in ("completed", "failed") else f"{v['status']} {v['progress']}%",
             v["model"], time.strftime("%m-%d %H:%M", time.localtime(v["created_at"])), v.get("prompt") or "")
            for v in videos]
    table = Table(box=None, pad_edge=False)  # as `kubectl get` lists: whole ids, to copy into the next command
    for i, name in enumerate(("id", "status", "model", "created")):
        table.add_column(name, no_wrap=True, min_width=max([len(name)] + [len(r[i]) for r in rows]))
    table.add_column("prompt", no_wrap=True, overflow="ellipsis")  # what gives way on a narrow terminal
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command()
def cancel(job_id: JobId) -> None:
    """Stop a queued or running video within one denoising step."""
    with _service() as client:
        job = client.call("POST", f"/v1/videos/{job_id}/cancel")
    what = job["status"] if job["status"] == "cancelled" else "cancelling"  # it stops at its next step
    out.print(f"{job['id']} {what} at step {job['step']} of {job['total_steps']}")


@app.command()
def models() -> None:
    """The served models: tasks, sizes, frames, replicas."""
    with _service() as client:
        cards = client.call("GET", "/v1/models")
    table = Table("model", "tasks", "default for", "sizes", "max frames", "fps", "replicas")
    for m in cards["data"]:
        replicas = ", ".join(f"{n} {s.lower()}" for s, n in m["replicas"]["states"].items()) or m["replicas"]["status"]
        table.add_row(m["id"], " ".join(m["tasks"]), " ".join(m["default_for"]), " ".join(m["sizes"]),
                      str(m["max_frames"]), str(m["fps"]), replicas)
    out.print(table)


@app.command()
def queue() -> None:
    """Jobs waiting and running per model."""
    with _service() as client:
        entries = client.call("GET", "/v1/queue")["data"]
    table = Table("model", "queued", "in progress", "limit", "replicas")
    for q in entries:
        table.add_row(q["model"], str(q["queued"]), str(q["in_progress"]), str(q["max_queued_jobs"]),
                      ", ".join(f"{n} {s.lower()}" for s, n in q["replicas"].items()))
    out.print(table)


def run() -> None:
    """The console script."""
    sys.exit(app())
