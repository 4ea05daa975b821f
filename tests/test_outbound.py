"""The outbound guard in-process: which addresses are refused, that a connection goes to the address checked, no
redirects, the size cap and the timeout; and media URLs through `MediaResolver`, against a real loopback server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from deployments import outbound
from deployments.outbound import FetchFailed, FetchTooLarge, URLRefused, check_url, describe, fetch, guarded_client
from serve_app.config import AppConfig
from serve_app.errors import APIError
from serve_app.media import MediaResolver, check_webhook
from serve_app.schemas import VideoCreateRequest
from tests.support.loopback import CHUNK, CHUNKS, PNG, Origin, origin_server

T = TypeVar("T")
REFUSED = ["127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f000001",
           "100.64.0.1", "224.0.0.1", "0.0.0.0", "localhost", "[64:ff9b::a00:1]", "[2002:a9fe:a9fe::]", "[fe80::1]",
           "[64:ff9b:1::a00:1]", "192.168.1.1", "172.16.0.1", "240.0.0.1"]


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with origin_server() as org:
        yield org


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:  # the bound only stops a hang from stalling the suite
        return await asyncio.wait_for(coro, timeout=60)

    return asyncio.run(bounded())


def fetch_with(url: str, *, allow_private: bool = True, max_bytes: int = 2**20, timeout_s: float = 10) -> bytes:
    async def go() -> bytes:
        async with guarded_client(allow_private=allow_private) as client:
            return await fetch(client, url, max_bytes=max_bytes, timeout_s=timeout_s)

    return run(go())


@pytest.mark.parametrize("host", REFUSED)
def test_internal_addresses_are_refused_naming_only_the_host_given(host: str) -> None:
    with pytest.raises(URLRefused) as refused:
        run(check_url(f"http://{host}:8265/latest/meta-data", allow_private=False))
    assert host.strip("[]") in refused.value.reason
    if host == "localhost":
        assert "127.0.0.1" not in refused.value.reason and "::1" not in refused.value.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]", "localhost", "100.64.0.1"])
def test_private_addresses_are_allowed_when_opted_in(host: str) -> None:
    target = run(check_url(f"http://{host}/hook", allow_private=True))
    assert target.host == host.strip("[]") and target.addresses


@pytest.mark.parametrize("host", ["224.0.0.1", "0.0.0.0", "240.0.0.1", "[ff02::1]"])
def test_multicast_unspecified_and_reserved_stay_refused_when_opted_in(host: str) -> None:
    with pytest.raises(URLRefused):
        run(check_url(f"http://{host}/", allow_private=True))


def test_a_name_is_refused_if_any_of_its_addresses_is(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"public.test": ["93.184.216.34", "2606:2800:220:1::"], "mixed.test": ["93.184.216.34", "10.1.2.3"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr(outbound, "resolve", resolve)
    assert run(check_url("https://public.test/x", allow_private=False)).addresses == tuple(answers["public.test"])
    with pytest.raises(URLRefused):
        run(check_url("https://mixed.test/x", allow_private=False))


@pytest.mark.parametrize(("url", "allow_http"), [("ftp://example.com/a", True), ("file:///etc/passwd", True),
                                                 ("http://example.com/a", False), ("https://u:p@example.com/", True)])
def test_schemes_and_credentials_not_allowed_are_refused_before_any_lookup(
        url: str, allow_http: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("looked up")

    monkeypatch.setattr(outbound, "resolve", resolve)
    with pytest.raises(URLRefused):
        run(check_url(url, allow_private=True, allow_http=allow_http))


def test_an_unresolvable_host_is_a_fetch_failure() -> None:
    with pytest.raises(FetchFailed, match="could not be resolved"):
        run(check_url("http://no-such-host.invalid/", allow_private=False))


def test_the_connection_goes_to_the_address_checked(origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name resolves nowhere for the system: only a connection pinned to the checked address reaches the
    origin, with the name as its Host. A second lookup would get another address."""
    answers = iter([["127.0.0.1"], ["10.255.255.1"]])
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    monkeypatch.setattr(outbound, "resolve", resolve)
    origin.seen.clear()
    assert fetch_with(origin.url("/image.png", host="pinned.invalid")) == PNG
    assert origin.seen == [("/image.png", f"pinned.invalid:{origin.port}")]
    assert lookups == ["pinned.invalid"], "one lookup, and the connection used it"


def test_https_keeps_the_host_for_tls_and_connects_to_the_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[httpx.Request] = []

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    async def network(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"ok")

    monkeypatch.setattr(outbound, "resolve", resolve)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", network)
    assert fetch_with("https://media.example.com/a.png", allow_private=False) == b"ok"
    [request] = sent
    assert (request.url.host, request.url.port) == ("93.184.216.34", None)
    assert request.headers["host"] == "media.example.com"
    assert request.extensions["sni_hostname"] == "media.example.com"


def test_a_refused_address_is_never_connected_to(origin: Origin) -> None:
    origin.seen.clear()
    with pytest.raises(URLRefused):
        fetch_with(origin.url("/image.png"), allow_private=False)
    with pytest.raises(URLRefused):
        fetch_with(origin.url("/image.png", host="localhost"), allow_private=False)
    assert origin.seen == []


def test_redirects_are_not_followed(origin: Origin) -> None:
    origin.seen.clear()
    with pytest.raises(FetchFailed, match="HTTP 302"):
        fetch_with(origin.url("/redirect"))
    assert [path for path, _ in origin.seen] == ["/redirect"]


@pytest.mark.parametrize("path", ["/declared", "/chunked"])
def test_a_body_over_the_cap_is_refused(origin: Origin, path: str) -> None:
    with pytest.raises(FetchTooLarge):
        fetch_with(origin.url(path), max_bytes=3 * CHUNK)
    assert len(fetch_with(origin.url("/chunked"), max_bytes=CHUNKS * CHUNK)) == CHUNKS * CHUNK


def test_the_whole_fetch_times_out(origin: Origin) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="timed out"):
        fetch_with(origin.url("/slow"), timeout_s=0.3)
    assert time.monotonic() - started < 5


def test_failures_are_described_without_internal_detail(origin: Origin) -> None:
    with pytest.raises(FetchFailed) as not_found:
        fetch_with(origin.url("/missing"))
    assert not_found.value.reason == "HTTP 404"
    with socket.socket() as sock:  # bound, never listening: the connection is refused
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(FetchFailed) as refused:
            fetch_with(f"http://127.0.0.1:{sock.getsockname()[1]}/")
    assert refused.value.reason == "connection refused"
    assert describe(URLRefused("host 'x' resolves to ...")) == "address not allowed"
    assert describe(httpx.ConnectTimeout("timed out connecting to 10.0.0.7:22")) == "timed out"


# --- the HTTP layer's use of it: webhook_url at create, media fields by URL --------------------------------------


def config(**media_urls: Any) -> AppConfig:
    return AppConfig(models=[{"name": "tiny-i2v"}], media_urls=media_urls)


def resolve_media(cfg: AppConfig, **fields: str) -> Any:
    body = VideoCreateRequest(prompt="go", **fields)
    resolver = MediaResolver(None, None, cfg)  # type: ignore[arg-type]  # no session files in these requests
    return run(resolver.resolve(body, {}, None))


def api_error(call: Any) -> APIError:
    with pytest.raises(APIError) as error:
        call()
    return error.value


def test_webhook_url_is_checked_at_create() -> None:
    for url in ("http://169.254.169.254/latest/meta-data", "http://2130706433:8265/", "http://localhost/hook"):
        error = api_error(lambda u=url: run(check_webhook(u, allow_private=False)))
        assert (error.status, error.param, error.code) == (400, "webhook_url", "url_not_allowed")
    run(check_webhook("http://127.0.0.1:9/hook", allow_private=True))
    run(check_webhook(None, allow_private=False))


def test_media_by_url_is_fetched_and_decoded(origin: Origin) -> None:
    media = resolve_media(config(allow_http=True, allow_private_networks=True),
                          input_reference=origin.url("/image.png"), last_image=origin.url("/image.png"))
    assert media.image.shape == (32, 64, 3) and media.last_image.shape == (32, 64, 3)


@pytest.mark.parametrize(("settings", "path", "status", "code"), [
    ({"allow_http": True}, "/image.png", 400, "url_not_allowed"),  # loopback, not opted in
    ({"allow_private_networks": True}, "/image.png", 400, "url_not_allowed"),  # http, not opted in
    ({"enabled": False, "allow_http": True, "allow_private_networks": True}, "/image.png", 400, "invalid_url"),
    ({"allow_http": True, "allow_private_networks": True}, "/missing", 400, "fetch_failed"),
    ({"allow_http": True, "allow_private_networks": True}, "/redirect", 400, "fetch_failed"),
    ({"allow_http": True, "allow_private_networks": True, "max_mb": 1}, "/chunked", 413, "too_large"),
])
def test_media_url_failures_are_4xx_naming_the_field(origin: Origin, settings: dict[str, Any], path: str,
                                                     status: int, code: str) -> None:
    error = api_error(lambda: resolve_media(config(**settings), reference_image=origin.url(path)))
    assert (error.status, error.param, error.code) == (status, "reference_image", code), error.message


def test_a_url_to_something_not_an_image_is_a_422(origin: Origin) -> None:
    error = api_error(lambda: resolve_media(config(allow_http=True, allow_private_networks=True, max_mb=2),
                                            input_reference=origin.url("/chunked")))
    assert (error.status, error.param) == (422, "input_reference")
