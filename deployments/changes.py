"""Wake-ups for those watching jobs: the job tracker's threads say what changed, its event loop's waiters wake.

A waiter registers under keys (a job's id; `QUEUE` for any move in any model's queue) before it reads the record,
so a change between the read and the wait is never missed: it finds its event already set.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

QUEUE = "queue"  # signalled when a job starts, ends or goes: queued jobs' positions may have moved

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


class Changes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[_Waiter]] = {}

    @contextmanager
    def waiting(self, *keys: str) -> Iterator[asyncio.Event]:
        """An event set once any of `keys` is signalled, from any thread, while the block runs."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            for key in keys:
                self._waiting.setdefault(key, set()).add(waiter)
        try:
            yield waiter[1]
        finally:
            with self._lock:
                for key in keys:
                    waiters = self._waiting.get(key, set())
                    waiters.discard(waiter)
                    if not waiters:
                        self._waiting.pop(key, None)

    def signal(self, *keys: str) -> None:
        """Wake everyone waiting on any of `keys`; safe from any thread."""
        with self._lock:
            waiters = {w for key in keys for w in self._waiting.get(key, ())}
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def waiting_on(self, key: str) -> int:
        """How many wait on `key` now."""
        with self._lock:
            return len(self._waiting.get(key, ()))
