"""Notifier: POSTs a signed JSON event to a job's webhook when the job ends.

Signed the Standard Webhooks way, as OpenAI's own webhooks are, so a client verifies a delivery with the
official SDK (`client.webhooks.unwrap(body, headers, secret=...)`) or any Standard Webhooks library:
`webhook-signature: v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`, where the
secret is written `whsec_<base64 key>`. A delivery is retried with exponential backoff; the webhook-id
stays the same on every attempt so the receiver can drop duplicates, the timestamp and signature are
fresh so a slow retry still falls inside the receiver's replay window.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from ray import serve

from deployments.outbound import OutboundError, URLRefused, describe, guarded_client

log = logging.getLogger("ray.serve")

SECRET_PREFIX = "whsec_"
USER_AGENT = "wan-serve-webhooks/0.1"
MAX_RETRY_AFTER_S = 60.0  # a receiver cannot park a delivery (and a slot of this replica) for longer
JITTER = 0.1  # up to +10% on each backoff, so retries to one receiver do not arrive in lockstep


@dataclass(frozen=True)
class Delivery:
    """How a delivery ended: `status_code` and `error` describe the last attempt."""

    delivered: bool
    attempts: int
    status_code: int | None
    error: str | None


def new_secret() -> str:
    """A fresh signing secret (32 random bytes), in the `whsec_` form the SDKs expect."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    """The HMAC key, read as the openai SDK reads it: base64 after `whsec_`, else the raw text."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one attempt."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def _headers(secret: str | None, webhook_id: str, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
    }
    if secret is not None:
        headers["webhook-signature"] = sign(secret, webhook_id, timestamp, body)
    return headers


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, capped; None when absent or an HTTP date (then the backoff applies)."""
    try:
        return min(max(float(response.headers["retry-after"]), 0.0), MAX_RETRY_AFTER_S)
    except (KeyError, ValueError):
        return None


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    event: dict[str, Any],
    secret: str | None,
    *,
    max_attempts: int,
    backoff_s: float,
    timeout_s: float,
) -> Delivery:
    """POST `event` to `url` until a 2xx, a final answer or `max_attempts`; never raises for the receiver's faults.

    The webhook-id is the event's id, so a redelivery of the same event (even by a restarted caller) carries
    the same id. `timeout_s` bounds each attempt as a whole, not each read. `client` is a `guarded_client`, so
    an address not allowed is a final failure; the error kept is `describe`'s (published on the job: no
    addresses or errno text, which would make the service a port scanner).
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    body = json.dumps(event, separators=(",", ":")).encode()
    webhook_id = str(event.get("id") or f"msg_{uuid.uuid4().hex}")
    status: int | None = None
    error: str | None = None
    for attempt in range(1, max_attempts + 1):
        retry_after: float | None = None
        try:
            async with asyncio.timeout(timeout_s):
                # Streamed so the receiver's answer body is never read: only its status matters.
                request = client.build_request("POST", url, content=body, headers=_headers(secret, webhook_id, body))
                response = await client.send(request, stream=True)
                await response.aclose()
        except (URLRefused, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return Delivery(False, attempt, None, describe(exc))
        except (OutboundError, httpx.TransportError, TimeoutError) as exc:
            status, error = None, describe(exc)
        else:
            status = response.status_code
            if response.is_success:
                return Delivery(True, attempt, status, None)
            error = f"HTTP {status}"
            if not _retryable(status):
                return Delivery(False, attempt, status, error)
            retry_after = _retry_after(response)
        if attempt < max_attempts:
            delay = retry_after if retry_after is not None else backoff_s * 2 ** (attempt - 1)
            await asyncio.sleep(delay * (1 + random.uniform(0, JITTER)))
    return Delivery(False, max_attempts, status, error)


@serve.deployment(max_ongoing_requests=100, ray_actor_options={"num_cpus": 0})
class Notifier:
    """Delivers job events to webhooks; one HTTP client per replica, so connections are reused."""

    def __init__(self, secret: str | None, max_attempts: int = 5, backoff_s: float = 1.0,
                 timeout_s: float = 10.0, allow_private: bool = False) -> None:
        self._secret = secret
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._client = guarded_client(allow_private=allow_private, timeout_s=timeout_s)

    async def notify(self, url: str, event: dict[str, Any]) -> dict[str, Any]:
        delivery = await deliver(self._client, url, event, self._secret, max_attempts=self._max_attempts,
                                 backoff_s=self._backoff_s, timeout_s=self._timeout_s)
        if not delivery.delivered:
            log.warning("webhook %s for %s not delivered after %d attempt(s): %s",
                        event.get("type"), event.get("id"), delivery.attempts, delivery.error)
        return asdict(delivery)
