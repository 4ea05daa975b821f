"""The domain's errors, raised below the HTTP layer and mapped to HTTP in one place (`serve_app/errors.py`).

Each keeps its text in `message` as well: a Ray call's error arrives wrapped, and the wrapper's `str()` is a
traceback.
"""

from __future__ import annotations

from pipelines.request import InvalidRequest

__all__ = ["InvalidRequest", "KeyReused", "QueueFull"]


class QueueFull(Exception):
    """Too many jobs are already waiting for this model, or for this API key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KeyReused(Exception):
    """The `Idempotency-Key` was already used, by this API key, with another body."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
