"""The JobTracker's background duties each keep their own clock: a daemon thread per duty, started by its part."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("ray.serve")


def every(interval_s: float, work: Callable[[], object], name: str) -> threading.Event:
    """Run `work` every `interval_s` in a daemon thread named `name` until the event returned is set. A round that
    fails is logged and the next one tries again (the Uploader away, say): a duty never dies of one failure."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                work()
            except Exception:
                log.exception("%s failed: trying again in %g s", name, interval_s)

    threading.Thread(target=loop, daemon=True, name=name).start()
    return stop
