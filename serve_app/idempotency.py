"""The `Idempotency-Key` header of the create endpoints: a retry of the same request gets the same job.

A request is named by its key and fingerprinted by its content (the endpoint, the validated body as canonical
JSON, and a digest of each file), so the same key with another body is told apart and refused (a 409). The
lookup and the admission are one step in the job store (`SQLiteJobStore.create`), and keys live as long as
their jobs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import Header
from pydantic import BaseModel

from domain.records import Idempotency
from serve_app.errors import APIError

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
KeyHeader = Annotated[str | None, Header(
    alias=HEADER, description="a retry with the same key and body gets the same job back (200) instead of a new "
                              "one; the same key with another body is a 409. At most 255 characters.")]


def fingerprint(path: str, body: BaseModel, files: dict[str, bytes] | None = None) -> str:
    """A sha256 of the request as validated: the same request gives the same digest, whatever its field order."""
    canonical = {"path": path, "body": body.model_dump(mode="json"),
                 "files": {name: hashlib.sha256(data).hexdigest() for name, data in (files or {}).items()}}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def idempotency(key: str | None, path: str, body: BaseModel, files: dict[str, bytes] | None = None
                ) -> Idempotency | None:
    """The request's key and fingerprint; None without the header. A key of 1 to 255 characters, else a 400."""
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY_CHARS:
        raise APIError(400, f"{HEADER} must be 1 to {MAX_KEY_CHARS} characters long, not {len(key)}",
                       param=HEADER, code="invalid_idempotency_key")
    return Idempotency(key, fingerprint(path, body, files))
