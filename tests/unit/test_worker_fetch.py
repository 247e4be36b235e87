"""SSRF-safe input fetching. No test here reaches past loopback: the policy refuses other
addresses before any connection, and transports are mocked."""

from __future__ import annotations

import io
import ipaddress

import httpx
import pytest
from PIL import Image

from gpufleet_worker.fetch import (
    FetchPolicy,
    InputFetchFailed,
    InputRefused,
    address_problem,
    decode_image,
    fetch_bytes,
)

POLICY = FetchPolicy(max_bytes=1000, timeout_seconds=5)
PUBLIC = ipaddress.ip_address("93.184.216.34")


def resolver(answers: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list:
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


def unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request may be sent, but {request.url} was")


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-global"),
        ("fd00::1", "private"),
    ],
)
def test_internal_addresses_are_refused(address: str, kind: str) -> None:
    problem = address_problem(ipaddress.ip_address(address), ())
    assert problem is not None and kind in problem


def test_public_addresses_pass_and_allowed_networks_open_private_ones() -> None:
    assert address_problem(PUBLIC, ()) is None
    allowed = (ipaddress.ip_network("10.0.0.0/8"),)
    assert address_problem(ipaddress.ip_address("10.1.2.3"), allowed) is None
    assert address_problem(ipaddress.ip_address("192.168.1.1"), allowed) is not None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://example.com/",
        "http://user:pass@example.com/x.png",
        "http:///x.png",
        "http://example.com:99999/x.png",
    ],
)
def test_only_plain_http_urls_are_fetched(url: str) -> None:
    with pytest.raises(InputRefused):
        fetch_bytes(url, POLICY, resolver({"example.com": [str(PUBLIC)]}), httpx.MockTransport(unreachable))


def test_a_name_that_resolves_to_any_internal_address_is_refused() -> None:
    answers = resolver({"images.example": [str(PUBLIC), "10.0.0.7"]})
    with pytest.raises(InputRefused, match=r"10\.0\.0\.7 is a private address"):
        fetch_bytes("https://images.example/a.png", POLICY, answers, httpx.MockTransport(unreachable))


def test_connects_to_the_checked_address_keeping_host_and_sni() -> None:
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"image-bytes")

    answers = resolver({"images.example": [str(PUBLIC)]})
    body = fetch_bytes("https://images.example/a.png", POLICY, answers, httpx.MockTransport(serve))
    assert body == b"image-bytes"
    (request,) = seen
    assert request.url.host == str(PUBLIC)
    assert request.headers["host"] == "images.example"
    assert request.extensions["sni_hostname"] == "images.example"


def test_a_redirect_to_an_internal_address_is_refused() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        assert request.url.host == str(PUBLIC), "the redirect target must never be contacted"
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})

    answers = resolver({"images.example": [str(PUBLIC)]})
    with pytest.raises(InputRefused, match="link-local"):
        fetch_bytes("http://images.example/a.png", POLICY, answers, httpx.MockTransport(serve))


def test_endless_redirects_fail() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "/again"})

    answers = resolver({"images.example": [str(PUBLIC)]})
    with pytest.raises(InputFetchFailed, match="redirects"):
        fetch_bytes("http://images.example/a.png", POLICY, answers, httpx.MockTransport(serve))


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"x" * 1001),
        httpx.Response(200, headers={"Content-Length": "5000000"}, content=b""),
        httpx.Response(404, content=b"missing"),
    ],
)
def test_oversized_or_failed_bodies_fail(response: httpx.Response) -> None:
    answers = resolver({"images.example": [str(PUBLIC)]})
    transport = httpx.MockTransport(lambda request: response)
    with pytest.raises(InputFetchFailed):
        fetch_bytes("http://images.example/a.png", POLICY, answers, transport)


def test_decoding_refuses_non_images_and_decompression_bombs() -> None:
    with pytest.raises(InputFetchFailed, match="not a readable image"):
        decode_image(b"<html>", "input.image")
    huge = io.BytesIO()
    Image.new("1", (5000, 5000)).save(huge, format="PNG")
    with pytest.raises(InputFetchFailed, match="over the limit"):
        decode_image(huge.getvalue(), "input.image")
    small = io.BytesIO()
    Image.new("L", (8, 8)).save(small, format="PNG")
    assert decode_image(small.getvalue(), "input.image").mode == "RGB"
