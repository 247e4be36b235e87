"""The worker refuses before it reads: the token first, then the body's size, then its content."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from gpufleet_worker import protocol as p

pytestmark = [pytest.mark.slow]

LIMIT = 64 * 1024
BIG = 32 * 2**20  # what an attacker sends: far over any limit


@pytest.fixture(scope="module")
def worker(start_worker: Any) -> Any:
    return start_worker(
        {
            "name": "gated",
            "maxRequestBytes": "64Ki",
            "models": [{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "512Mi"}],
        }
    )


def status_line(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received.split(b"\r\n", 1)[0]


def declared_only(worker: Any, length: int, authorization: str | None) -> bytes:
    """Sends the headers of a POST whose body never comes; the answer's status line."""
    auth = f"{p.AUTH_HEADER}: {authorization}\r\n" if authorization else ""
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as sock:
        sock.sendall(
            f"POST {p.JOBS} HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {length}\r\n\r\n".encode()
        )
        return status_line(sock)


def test_no_token_gets_401_before_the_body_is_sent(worker: Any) -> None:
    assert declared_only(worker, BIG, None) == b"HTTP/1.1 401 Unauthorized"
    assert declared_only(worker, BIG, "Bearer wrong-token") == b"HTTP/1.1 401 Unauthorized"


def test_no_token_with_a_body_that_does_not_parse_gets_401_not_a_parse_error(worker: Any) -> None:
    for body in (b"{not json", b'{"jobId": 7}', b""):
        response = httpx.post(
            worker.base_url + p.JOBS, content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 401, response.text
        assert response.json()["reason"] == "Unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent(worker: Any) -> None:
    token = p.auth_header_value(worker.token)
    assert declared_only(worker, LIMIT + 1, token) == b"HTTP/1.1 413 Request Entity Too Large"


def test_a_chunked_body_over_the_limit_gets_413(worker: Any) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(LIMIT // 1024 + 1):
            yield b" " * 1024

    response = worker.client.post(p.JOBS, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {
        "reason": "RequestTooLarge",
        "message": f"request body: at most {LIMIT} bytes (the worker's maxRequestBytes)",
    }


def test_a_body_at_the_limit_reaches_the_route_and_parse_errors_are_422(worker: Any) -> None:
    at_limit = b"{" + b" " * (LIMIT - 1)
    response = worker.client.post(p.JOBS, content=at_limit, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["reason"] == "InvalidRequest"
    response = worker.client.post(p.JOBS, json={"jobId": "studio/x"})
    assert response.status_code == 422
    assert "attempt: Field required" in response.json()["message"]


def unauthenticated_flood(worker: Any, chunked: bool) -> None:
    """One client that sends BIG bytes of valid JSON without a token; errors once the worker
    has answered and closed are expected."""
    body = b'{"jobId": "studio/x", "input": {"prompt": "' + b"a" * (BIG - 46) + b'"}}'
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    try:
        with socket.create_connection(("127.0.0.1", worker.port), timeout=30) as sock:
            sock.sendall(
                f"POST {p.JOBS} HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
                f"{framing}\r\n\r\n".encode()
            )
            if chunked:
                step = 2**20
                for start in range(0, len(body), step):
                    piece = body[start : start + step]
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(body)
            status_line(sock)
    except OSError:
        pass


def test_unauthenticated_large_bodies_do_not_grow_the_workers_memory(worker: Any) -> None:
    process = psutil.Process(worker.process.pid)
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [
        threading.Thread(target=unauthenticated_flood, args=(worker, chunked))
        for chunked in (False, True)
        for _ in range(4)
    ]
    try:
        for client in clients:
            client.start()
        for client in clients:
            client.join(120)
    finally:
        done.set()
        sampler.join()
    # 8 x 32 MiB arrived; before the token is checked none of it may be held.
    growth = peak - baseline
    assert growth < 32 * 2**20, f"worker RSS grew by {growth / 2**20:.0f} MiB"
    assert httpx.get(worker.base_url + p.HEALTHZ).status_code == 200
