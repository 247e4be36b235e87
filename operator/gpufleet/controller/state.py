"""What the operator keeps in memory between reconcile rounds. All of it can be lost:
after a restart it is rebuilt from the resources and the workers' reports."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gpufleet.core.placement import DemandMix
from gpufleet.core.sizing import SizingState
from gpufleet.core.workerpod import WorkerEnv

from .kube import Kube


@dataclass
class PoolMemory:
    mix: DemandMix = field(default_factory=DemandMix)
    observed: set[str] = field(default_factory=set)  # jobs already counted in the mix
    token_secret_for: str | None = None  # pool uid whose token Secret exists
    last_status: dict | None = None
    sizing: SizingState = field(default_factory=SizingState)


@dataclass
class JobMemory:
    not_before: float = 0.0  # retry backoff: earliest next dispatch (monotonic)
    avoid: set[str] = field(default_factory=set)  # workers that lost an attempt
    follower: asyncio.Task | None = None
    follower_attempt: int = 0
    last_progress_write: float = 0.0
    cancel_sent: bool = False
    last_refusal: str | None = None


@dataclass
class Operator:
    kube: Kube
    http: httpx.AsyncClient
    token_key: bytes
    worker_env: WorkerEnv
    worker_port: int = 8080
    progress_interval: float = 1.0
    pools: dict[tuple[str, str], PoolMemory] = field(default_factory=dict)
    jobs: dict[tuple[str, str], JobMemory] = field(default_factory=dict)

    def pool_token(self, namespace: str, pool: str, uid: str) -> str:
        """The pool's worker token, derived from the operator's key: never stored where it is read."""
        message = f"{namespace}/{pool}/{uid}".encode()
        return hmac.new(self.token_key, message, hashlib.sha256).hexdigest()

    def job(self, namespace: str, name: str) -> JobMemory:
        return self.jobs.setdefault((namespace, name), JobMemory())

    def pool(self, namespace: str, name: str) -> PoolMemory:
        return self.pools.setdefault((namespace, name), PoolMemory())


def read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"{path}: the token key must be at least 16 bytes")
    return key
