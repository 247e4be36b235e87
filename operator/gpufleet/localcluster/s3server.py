"""A real S3-compatible server (MinIO) on loopback, for tests and the local demo.

MinIO is built from its Go module the first time (``binaries.ensure("minio")``). Each server
gets a free port, a fresh data folder and its own root credentials; ``stop()`` leaves no
process and no listening port behind.

    python -m gpufleet.localcluster.s3server --bucket gpufleet-artifacts   # run until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from . import binaries
from .processes import ManagedProcess, ProcessExited, free_port
from .waiting import wait_for


class S3Server:
    def __init__(self, data_dir: Path | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="gpufleet-s3-"))
        self.access_key = "gpufleet-" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)
        self.region = "us-east-1"
        self.port = 0
        self.process: ManagedProcess | None = None
        self.startup_seconds = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment a client (the worker) needs to reach this server."""
        return {
            "GPUFLEET_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def start(self, timeout: float = 60) -> S3Server:
        minio = binaries.ensure("minio")
        started = time.monotonic()
        self.port = free_port(self.host)
        console_port = free_port(self.host)
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",  # no terminal colours or interactive prompts
        }
        self.process = ManagedProcess(
            "minio",
            [
                str(minio),
                "server",
                str(self.data_dir / "data"),
                "--address",
                f"{self.host}:{self.port}",
                "--console-address",
                f"{self.host}:{console_port}",
                "--quiet",
            ],
            self.data_dir / "minio.log",
            env=env,
        )
        try:
            wait_for(self._live, bool, timeout, interval=0.1, what=f"MinIO at {self.endpoint}")
        except Exception:
            log = self.process.log_tail()
            self.stop()
            raise RuntimeError(f"MinIO did not start; its log ends:\n{log}") from None
        self.startup_seconds = time.monotonic() - started
        return self

    def _live(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise ProcessExited(f"minio exited with {self.process.popen.returncode}")
        response = httpx.get(f"{self.endpoint}/minio/health/live", timeout=2)
        return response.status_code == 200

    def client(self) -> Any:
        """A boto3 S3 client with root credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    parser.add_argument("--data-dir", type=Path, help="keep data here (default: a temp folder)")
    args = parser.parse_args(argv)
    with S3Server(args.data_dir) as server:
        for bucket in args.bucket:
            server.create_bucket(bucket)
        for key, value in server.env().items():
            print(f"export {key}={value}")
        print(f"# MinIO up in {server.startup_seconds:.1f}s; Ctrl-C stops it", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
