"""Webhook delivery against a real HTTP receiver on loopback: signing, retries, and what is not retried.

No Ray: `deliver` is plain asyncio + httpx, and `Notifier` is exercised as its undecorated class.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from deployments import notifier
from deployments.notifier import Delivery, Notifier, deliver, new_secret, sign
from deployments.outbound import guarded_client
from tests.support.webhooks import HANG, WebhookReceiver, webhook_receiver

EVENT: dict[str, Any] = {
    "id": "evt_0123456789abcdef",
    "object": "event",
    "type": "video.completed",
    "created_at": 1_750_000_000,
    "data": {"id": "video_abc", "status": "completed", "assets": {"video": "videos/video_abc.mp4"}},
}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as rec:
        yield rec


def run_deliver(url: str, secret: str | None, *, max_attempts: int = 3, backoff_s: float = 0.01,
                timeout_s: float = 30.0, event: dict[str, Any] = EVENT, allow_private: bool = True) -> Delivery:
    async def go() -> Delivery:
        async with guarded_client(allow_private=allow_private) as client:  # as the Notifier's, opted in to loopback
            # The bound only stops a broken retry loop from hanging the suite.
            return await asyncio.wait_for(deliver(client, url, event, secret, max_attempts=max_attempts,
                                                  backoff_s=backoff_s, timeout_s=timeout_s), timeout=120)

    return asyncio.run(go())


def unwrap(body: bytes, headers: dict[str, str], secret: str) -> Any:
    return openai.OpenAI(api_key="x").webhooks.unwrap(body, headers, secret=secret)


def test_signed_delivery_verifies_with_the_openai_sdk(receiver: WebhookReceiver) -> None:
    secret = new_secret()
    before = int(time.time())
    assert run_deliver(receiver.url, secret) == Delivery(True, 1, 200, None)
    [got] = receiver.drain()

    assert got.body == json.dumps(EVENT, separators=(",", ":")).encode()
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["content-type"] == "application/json"
    assert "wan-serve" in headers["user-agent"]
    assert headers["webhook-id"] == EVENT["id"]
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())

    event = unwrap(got.body, got.headers, secret)
    assert (event.id, event.type, event.data.id) == (EVENT["id"], "video.completed", "video_abc")

    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + got.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == expected


def test_sign_matches_the_standard_webhooks_reference_vector() -> None:
    # The test vector of the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_tampered_body_or_wrong_secret_fails_verification(receiver: WebhookReceiver) -> None:
    secret = new_secret()
    assert run_deliver(receiver.url, secret).delivered
    [got] = receiver.drain()
    tampered = got.body.replace(b"video.completed", b"video.failed")
    assert tampered != got.body
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(tampered, got.headers, secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(got.body, got.headers, new_secret())


def test_new_secret_is_a_fresh_32_byte_key() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and b.startswith("whsec_") and a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32


def test_unsigned_when_there_is_no_secret(receiver: WebhookReceiver) -> None:
    assert run_deliver(receiver.url, None).delivered
    [got] = receiver.drain()
    headers = {k.lower() for k in got.headers}
    assert {"webhook-id", "webhook-timestamp"} <= headers
    assert "webhook-signature" not in headers


def test_5xx_is_retried_with_backoff_and_the_same_webhook_id(receiver: WebhookReceiver) -> None:
    secret = new_secret()
    receiver.script(503, 503)
    backoff_s = 0.05
    assert run_deliver(receiver.url, secret, max_attempts=5, backoff_s=backoff_s) == Delivery(True, 3, 200, None)
    attempts = receiver.drain()
    assert len(attempts) == 3
    assert {a.headers["webhook-id"] for a in attempts} == {EVENT["id"]}
    for a in attempts:  # every attempt carries its own valid signature
        unwrap(a.body, a.headers, secret)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    assert gaps[0] >= backoff_s and gaps[1] >= 2 * backoff_s


@pytest.mark.parametrize("status", [408, 429, 500, 502])
def test_transient_statuses_are_retried(receiver: WebhookReceiver, status: int) -> None:
    receiver.script(status)
    assert run_deliver(receiver.url, new_secret()) == Delivery(True, 2, 200, None)
    assert len(receiver.drain()) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 410, 302])
def test_other_non_2xx_answers_are_final(receiver: WebhookReceiver, status: int) -> None:
    receiver.script(status)
    assert run_deliver(receiver.url, new_secret(), max_attempts=5) == Delivery(False, 1, status, f"HTTP {status}")
    assert len(receiver.drain()) == 1


def test_retry_after_is_honoured(receiver: WebhookReceiver) -> None:
    receiver.script((429, {"Retry-After": "1"}))
    assert run_deliver(receiver.url, new_secret(), backoff_s=0.001).delivered
    first, second = receiver.drain()
    assert second.at - first.at >= 1.0


def test_retry_after_is_capped(receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifier, "MAX_RETRY_AFTER_S", 0.2)
    receiver.script((503, {"Retry-After": "3600"}))
    assert run_deliver(receiver.url, new_secret(), backoff_s=0.001) == Delivery(True, 2, 200, None)
    first, second = receiver.drain()
    assert 0.2 <= second.at - first.at < 20


def test_unreachable_receiver_gives_up_after_max_attempts() -> None:
    with socket.socket() as sock:  # bound but never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        delivery = run_deliver(f"http://127.0.0.1:{sock.getsockname()[1]}/", new_secret(), max_attempts=3)
    assert (delivery.delivered, delivery.attempts, delivery.status_code) == (False, 3, None)
    assert delivery.error == "connection refused", "what failed, never the address or errno text"


def test_a_receiver_that_never_answers_times_out_each_attempt(receiver: WebhookReceiver) -> None:
    receiver.script(HANG, HANG)
    delivery = run_deliver(receiver.url, new_secret(), max_attempts=2, timeout_s=0.3)
    assert (delivery.delivered, delivery.attempts, delivery.status_code) == (False, 2, None)
    assert delivery.error == "timed out"
    assert [a.headers["webhook-id"] for a in receiver.drain()] == [EVENT["id"]] * 2


def test_a_url_without_http_is_not_retried() -> None:
    delivery = run_deliver("ftp://example.invalid/hook", new_secret(), max_attempts=5)
    assert (delivery.delivered, delivery.attempts) == (False, 1)
    assert delivery.error == "scheme not allowed"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "2130706433"])
def test_an_internal_address_is_a_final_failure_unless_opted_in(receiver: WebhookReceiver, host: str) -> None:
    url = receiver.url.replace("127.0.0.1", host)
    assert run_deliver(url, None, max_attempts=5, allow_private=False) == Delivery(False, 1, None,
                                                                                   "address not allowed")
    assert receiver.drain() == [], "nothing was sent"


def test_notifier_returns_the_delivery_as_a_dict(receiver: WebhookReceiver) -> None:
    secret = new_secret()
    receiver.script(500)
    # The deployment's own class, outside Ray: construction and `notify` are plain Python.
    instance = Notifier.func_or_class(secret, max_attempts=2, backoff_s=0.01, timeout_s=30.0, allow_private=True)
    result = asyncio.run(asyncio.wait_for(instance.notify(receiver.url, EVENT), timeout=120))
    assert result == {"delivered": True, "attempts": 2, "status_code": 200, "error": None}
    for got in receiver.drain():
        assert unwrap(got.body, got.headers, secret).id == EVENT["id"]
