"""Waiting as a client waits: poll until something holds, with a deadline that only bounds a hang and a message
that says what never happened (and the last thing seen), so a slow machine is told from a broken one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

ENDED = frozenset({"completed", "failed", "cancelled"})  # a job or batch in one of these will not change again
POLL_S = 0.1  # how often tests poll, as a client would; faster only loads the 2 cores the app runs on
T = TypeVar("T")


def until(check: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Seconds until `check()` holds (polled; the deadline only bounds a hang)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} did not happen within {timeout_s} s"
        time.sleep(POLL_S)
    return time.monotonic() - started


def polled(fetch: Callable[[], T], check: Callable[[T], Any], timeout_s: float, what: str) -> T:
    """`fetch()` again until `check` holds of what it gives (an SDK's object, a handle's answer); that."""
    deadline = time.monotonic() + timeout_s
    while not check(got := fetch()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s; last: {got}"
        time.sleep(POLL_S)
    return got


def poll(client: httpx.Client, path: str, check: Callable[[dict[str, Any]], Any], timeout_s: float = 120,
         what: str = "") -> dict[str, Any]:
    """GET `path` until `check` holds of its JSON body, as a client would; the body that held."""
    return polled(lambda: client.get(path).json(), check, timeout_s, what or f"{path} getting there")


def wait_for(client: httpx.Client, video_id: str, until: set[str] | frozenset[str] = ENDED,
             timeout_s: float = 120) -> dict[str, Any]:
    """Poll a video until its status is in `until` (by default, until it ended)."""
    return poll(client, f"/v1/videos/{video_id}", lambda v: v["status"] in until, timeout_s,
                f"{video_id} reaching {sorted(until)}")


def ended(client: httpx.Client, path: str, timeout_s: float = 120) -> dict[str, Any]:
    """Poll any job's record (a video, a batch) at `path` until it ended."""
    return poll(client, path, lambda body: body["status"] in ENDED, timeout_s, f"{path} to end")


async def eventually(check: Callable[[], Any], timeout_s: float, what: str, poll_s: float = POLL_S) -> None:
    """`until` inside an event loop: other tasks run between checks (`poll_s=0` only yields to them)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        await asyncio.sleep(poll_s)
