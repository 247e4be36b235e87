"""Fetching input images without letting a job reach into the cluster (SSRF).

Only http and https. The host is resolved once, every address it resolves to is checked,
and the connection goes to that checked address (the Host header and TLS SNI keep the
name), so a second DNS answer cannot swap in an internal address. Private, loopback,
link-local, multicast and reserved addresses are refused unless listed in
``allowed_networks``. Redirects are followed by hand, each hop checked the same way. The
body is read up to ``max_bytes``.
"""

from __future__ import annotations

import io
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from .config import ImageFetchConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[IPAddress]]

MAX_INPUT_PIXELS = 4096 * 4096


class InputRefused(Exception):
    """The input's location breaks the fetch policy."""


class InputFetchFailed(Exception):
    """The input could not be fetched or read."""


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_seconds: float
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_redirects: int = 3

    @classmethod
    def from_config(cls, config: ImageFetchConfig) -> FetchPolicy:
        return cls(
            max_bytes=config.max_bytes,
            timeout_seconds=config.timeout_seconds,
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in config.allowed_networks),
        )


def address_problem(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> str | None:
    """Why a job may not connect to ``address``, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in allowed):
        return None
    for kind, flagged in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-global", not address.is_global),
    ):
        if flagged:
            return f"{address} is a {kind} address"
    return None


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int


def parse_target(url: str) -> Target:
    """Scheme, host and port of an input URL, refusing anything but plain http(s) URLs."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InputRefused(f"input image URL scheme {parts.scheme or '(none)'!r}: only http and https")
    if parts.username is not None or parts.password is not None:
        raise InputRefused("input image URL must not carry credentials")
    if not parts.hostname:
        raise InputRefused(f"input image URL {url!r} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise InputRefused(f"input image URL port: {error}") from None
    return Target(parts.scheme, parts.hostname, port)


def system_resolver(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise InputFetchFailed(f"cannot resolve {host!r}: {error}") from None
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def checked_address(target: Target, policy: FetchPolicy, resolver: Resolver) -> IPAddress:
    """The address to connect to, once every address the host resolves to passed the policy."""
    try:
        addresses = [ipaddress.ip_address(target.host)]
    except ValueError:
        addresses = resolver(target.host, target.port)
    if not addresses:
        raise InputFetchFailed(f"{target.host!r} resolves to no address")
    for address in addresses:
        if problem := address_problem(address, policy.allowed_networks):
            raise InputRefused(
                f"input image host {target.host!r}: {problem}; refused (the worker's "
                "imageFetch.allowedNetworks can permit a private network)"
            )
    return addresses[0]


def fetch_bytes(
    url: str,
    policy: FetchPolicy,
    resolver: Resolver = system_resolver,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """The body at ``url``, fetched under ``policy``."""
    with httpx.Client(timeout=policy.timeout_seconds, follow_redirects=False, transport=transport) as client:
        for _hop in range(policy.max_redirects + 1):
            target = parse_target(url)
            address = checked_address(target, policy, resolver)
            pinned = httpx.URL(url).copy_with(host=str(address))
            host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
            request = client.build_request(
                "GET",
                pinned,
                headers={"Host": host_header},
                extensions={"sni_hostname": target.host},
            )
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as error:
                raise InputFetchFailed(f"fetching {url}: {error}") from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise InputFetchFailed(f"fetching {url}: HTTP {response.status_code}")
                return _read_limited(response, policy.max_bytes, url)
            finally:
                response.close()
    raise InputFetchFailed(f"fetching input image: more than {policy.max_redirects} redirects")


def _read_limited(response: httpx.Response, max_bytes: int, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InputFetchFailed(f"{url}: {declared} bytes is over the limit of {max_bytes}")
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise InputFetchFailed(f"{url}: body is over the limit of {max_bytes} bytes")
    except httpx.HTTPError as error:
        raise InputFetchFailed(f"fetching {url}: {error}") from None
    return bytes(body)


def decode_image(data: bytes, what: str) -> Image.Image:
    """An RGB image from encoded bytes, refusing decompression bombs."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_INPUT_PIXELS:
                raise InputFetchFailed(
                    f"{what}: {width}x{height} is over the limit of {MAX_INPUT_PIXELS} pixels"
                )
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise InputFetchFailed(f"{what}: not a readable image ({error})") from None
