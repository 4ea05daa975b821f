"""The one guard for every URL this service calls (webhooks, media URLs): no requests into its own network.

A URL is checked after DNS resolution: every address the host resolves to must be a public one, so a name that
points at loopback, a private range, link-local (cloud metadata at 169.254.169.254), CGNAT, multicast or a reserved
range, or an IPv6 form embedding one of those (IPv4-mapped, 6to4, NAT64), is refused. The connection then goes to
the address that was checked, not to a second lookup (no DNS rebinding): `GuardedTransport` resolves, checks and
sends the request to that IP with the original Host header and TLS server name. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the IPv4 address is the last 32 bits
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # a site's own translator: where it leads is unknowable
DEFAULT_PORTS = {"http": 80, "https": 443}
CHUNK = 64 * 1024


class OutboundError(Exception):
    """A call out that did not happen or did not finish; `reason` is safe to show a client (no internal detail)."""

    code = "fetch_failed"

    def __init__(self, reason: str, summary: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.summary = summary or reason  # what a job's record keeps: a few words


class URLRefused(OutboundError):
    """The URL is not one this service calls: its scheme, or an address it resolves to."""

    code = "url_not_allowed"

    def __init__(self, reason: str, summary: str = "address not allowed") -> None:
        super().__init__(reason, summary)


class FetchFailed(OutboundError):
    """The URL was allowed but the fetch failed: unresolvable, unreachable, timed out, or not a 2xx."""


class FetchTooLarge(OutboundError):
    """The answer is larger than the caller's cap."""

    code = "too_large"


@dataclass(frozen=True)
class Target:
    """A checked URL: the host as given and the addresses it resolved to, every one allowed."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[str, ...]


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), which is where packets end up."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refused(ip: IPAddress, *, allow_private: bool) -> bool:
    """Whether the service must not connect to `ip`. `allow_private` opens loopback, private, link-local and CGNAT
    (local receivers); multicast, unspecified and reserved addresses stay closed either way."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            return address_refused(embedded, allow_private=allow_private)
        if ip.teredo is not None or ip in LOCAL_NAT64:  # tunnels to addresses that cannot be checked from here
            return True
    if ip.is_multicast or ip.is_unspecified or (ip.is_reserved and not ip.is_loopback):  # ::1 is in ::/8
        return True
    if allow_private:
        return False
    cgnat = isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT
    return not ip.is_global or ip.is_loopback or ip.is_private or ip.is_link_local or cgnat


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, looked up off the event loop (the loop's resolver runs in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_url(url: str | httpx.URL, *, allow_private: bool, allow_http: bool = True) -> Target:
    """The URL, resolved and checked: raises `URLRefused` for a scheme or any address not allowed, `FetchFailed`
    for a host that does not resolve. Messages name only the host the caller gave, never what it resolved to."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise URLRefused("not a valid URL", "invalid URL") from exc
    schemes = ("http", "https") if allow_http else ("https",)
    if parsed.scheme not in schemes:
        raise URLRefused(f"only {' and '.join(s + '://' for s in schemes)} URLs are allowed", "scheme not allowed")
    host = parsed.host
    if not host:
        raise URLRefused("the URL has no host", "invalid URL")
    if parsed.userinfo:
        raise URLRefused("credentials in the URL are not allowed", "invalid URL")
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    try:
        addresses = await resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise FetchFailed(f"host {host!r} could not be resolved") from exc
    if not addresses:
        raise FetchFailed(f"host {host!r} could not be resolved")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope id
        if address_refused(ip, allow_private=allow_private):
            raise URLRefused(f"host {host!r} resolves to an address this server does not call "
                             "(private, loopback, link-local or reserved)")
    return Target(url=parsed, host=host, port=port, addresses=tuple(addresses))


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that checks each request's URL and connects to the address it checked.

    The request goes to the IP itself; its Host header (set by httpx from the URL) and, for https, the TLS server
    name (`sni_hostname`, also what the certificate is verified against) stay the original host's.
    """

    def __init__(self, *, allow_private: bool, allow_http: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.allow_private = allow_private
        self.allow_http = allow_http

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = await check_url(request.url, allow_private=self.allow_private, allow_http=self.allow_http)
        if target.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": target.host}
        request.url = request.url.copy_with(host=target.addresses[0].split("%", 1)[0])
        return await super().handle_async_request(request)


def guarded_client(*, allow_private: bool, allow_http: bool = True, timeout_s: float = 30.0) -> httpx.AsyncClient:
    """An async client whose every request goes through the guard: no redirects, no proxies from the
    environment (a proxy would make its own, unchecked, connection)."""
    return httpx.AsyncClient(transport=GuardedTransport(allow_private=allow_private, allow_http=allow_http),
                             follow_redirects=False, trust_env=False, timeout=timeout_s)


def describe(exc: BaseException) -> str:
    """What went wrong with a call out, in words safe to publish: no addresses, errno text or reprs."""
    match exc:
        case OutboundError():
            return exc.summary
        case TimeoutError() | httpx.TimeoutException():
            return "timed out"
        case httpx.InvalidURL() | httpx.UnsupportedProtocol():
            return "invalid URL"
        case httpx.ConnectError():
            causes = []
            cause = exc.__cause__ or exc.__context__
            while cause is not None and len(causes) < 10:
                causes.append(cause)
                cause = cause.__cause__ or cause.__context__
            if any(isinstance(c, ConnectionRefusedError) for c in causes):
                return "connection refused"
            return "TLS handshake failed" if any(isinstance(c, ssl.SSLError) for c in causes) else "could not connect"
        case httpx.RemoteProtocolError() | httpx.ReadError() | httpx.WriteError():
            return "connection closed by the receiver"
    return "network error"


async def fetch(client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout_s: float) -> bytes:
    """GET `url` through `client` (a `guarded_client`, whose policy applies), whole, within `timeout_s` and
    `max_bytes`. Raises `URLRefused`, `FetchTooLarge`, or `FetchFailed` with a reason safe to show the caller."""
    try:
        async with asyncio.timeout(timeout_s), client.stream("GET", url) as response:
            if response.is_redirect:
                raise FetchFailed(f"HTTP {response.status_code}: redirects are not followed")
            if not response.is_success:
                raise FetchFailed(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchTooLarge(f"larger than {max_bytes} bytes")
            data = bytearray()
            async for chunk in response.aiter_bytes(CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise FetchTooLarge(f"larger than {max_bytes} bytes")
            return bytes(data)
    except OutboundError:
        raise
    except (httpx.HTTPError, TimeoutError) as exc:
        raise FetchFailed(describe(exc)) from exc
