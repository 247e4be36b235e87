"""Fixtures for worker tests: the real S3-compatible server (tests using it are marked ``s3``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpufleet.localcluster.s3server import S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One MinIO for the session, on a free loopback port with a temporary data folder."""
    server = S3Server().start()
    print(f"\nS3 server up in {server.startup_seconds:.1f}s at {server.endpoint}")
    try:
        yield server
    finally:
        server.stop()
