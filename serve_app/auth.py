"""API keys: who is calling, checked once per request by one FastAPI dependency.

A key is stored and compared as its SHA-256 digest (a config may hold the digest alone, `sha256:<hex>`), every
configured digest is compared in constant time, and records carry the caller's key id (the digest's first 16
hex digits), never the key. With no key configured the service runs open: every caller is one anonymous admin.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from fastapi import Request

from serve_app.errors import APIError

DIGEST_PREFIX = "sha256:"
OPEN_PATHS = ("/health", "/")  # and the studio's static files (a mount, which no route dependency runs on)


@dataclass(frozen=True)
class Caller:
    """The key a request came with: its id, and whether it may see every key's records."""

    key_id: str | None
    admin: bool

    def sees(self, key_id: str | None) -> bool:
        return self.admin or key_id == self.key_id


ANONYMOUS = Caller(key_id=None, admin=True)  # no keys configured: the service is open


def digest(key: str) -> str:
    """A key as the config may hold it (`sha256:<hex>`), or the digest of a plain key."""
    if key.startswith(DIGEST_PREFIX):
        return key.removeprefix(DIGEST_PREFIX).lower()
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Keys:
    """The accepted keys, as digests: {digest: is admin}. Built once at startup; holds no key itself."""

    digests: dict[str, bool]

    @classmethod
    def resolve(cls, keys: list[str], admin_keys: list[str], env_var: str) -> Keys:
        """Keys from the config and from `env_var` (comma-separated)."""
        from_env = [k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip()]
        return cls({**{digest(k): False for k in [*keys, *from_env]}, **{digest(k): True for k in admin_keys}})

    @property
    def open(self) -> bool:
        return not self.digests

    def caller(self, authorization: str | None) -> Caller:
        """The caller an `Authorization: Bearer <key>` header names; a 401 for none or an unknown key."""
        if self.open:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("send your API key as `Authorization: Bearer <key>`")
        presented = hashlib.sha256(token.strip().encode()).hexdigest()
        found: str | None = None
        for known in self.digests:  # every digest compared, in constant time: no timing tells how close a guess is
            if hmac.compare_digest(presented, known):
                found = known
        if found is None:
            raise _unauthorized("the API key is not valid")
        return Caller(key_id=found[:16], admin=self.digests[found])


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def authorize(request: Request) -> None:
    """The one check on every route but OPEN_PATHS: the caller goes on `request.state.caller`."""
    keys: Keys = request.app.state.keys
    route = getattr(request.scope.get("route"), "path", None)  # the route's own path, whatever the app's prefix
    if route not in OPEN_PATHS:
        request.state.caller = keys.caller(request.headers.get("authorization"))


def caller_of(request: Request) -> Caller:
    return request.state.caller
