"""Fixtures for worker tests: workers started as processes (the S3 server is in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpufleet.localcluster.processes import ManagedProcess, ProcessExited, free_port
from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker.protocol import AUTH_HEADER, auth_header_value


class WorkerProcess:
    """A worker started as its own process, on CPU with a simulated GPU."""

    def __init__(self, directory: Path, config: dict[str, Any], env: dict[str, str]) -> None:
        self.token = secrets.token_urlsafe(24)
        token_file = directory / "token"
        token_file.write_text(self.token + "\n")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config_file = directory / "worker.json"
        config_file.write_text(json.dumps({"tokenFile": str(token_file), "device": "cpu", **config}))
        self.process = ManagedProcess(
            "worker",
            [sys.executable, "-m", "gpufleet_worker", "--config", str(config_file), "--port", str(self.port)],
            directory / "worker.log",
            env={**os.environ, **env},
        )
        self.client = httpx.Client(
            base_url=self.base_url, headers={AUTH_HEADER: auth_header_value(self.token)}, timeout=30
        )
        try:
            wait_for(self._ready, bool, 120, interval=0.2, what="worker /readyz")
        except Exception:
            print(self.process.log_tail(60))
            self.stop()
            raise

    def _ready(self) -> bool:
        if not self.process.alive():
            raise ProcessExited(f"worker exited:\n{self.process.log_tail(60)}")
        return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200

    def stop(self) -> None:
        self.client.close()
        self.process.stop()


@pytest.fixture(scope="module")
def start_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts workers with a config (camelCase, as in the config file); stops them after the module."""
    started: list[WorkerProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(tmp_path_factory.mktemp("worker"), config, env or {})
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
