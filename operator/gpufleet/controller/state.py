"""What the operator keeps in memory. All of it can be lost: after a restart it is rebuilt
from the resources and the workers' reports. One ``Operator`` owns it and is passed
explicitly (to kopf handlers through their ``memo``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gpufleet.api.conditions import Reason
from gpufleet.api.models import GenerationJob, WorkerPoolSpec
from gpufleet.core.breaker import BreakerPolicy, WorkerHealth
from gpufleet.core.fleetmetrics import PoolSeen
from gpufleet.core.jobs import GpuClass, Refusal
from gpufleet.core.placement import DemandMix
from gpufleet.core.queue import WaitingJob
from gpufleet.core.sizing import Job as SizingJob
from gpufleet.core.sizing import SizingState
from gpufleet.core.workerpod import WorkerEnv

from .cache import Cache, Key
from .kube import Kube

log = logging.getLogger("gpufleet.operator")


@dataclass(frozen=True)
class JobDecision:
    """What a round decided for one job, and from what: the parsed job (the cache keeps one
    object while the job is unchanged) and ``basis``, the pool's spec and GPU classes. While
    both are the same the decision stands, so a queue of thousands is not re-decided every round.

    A job waiting in the queue (``queued``), and a finished one that stays until its TTL
    (``quiet_until``), is held compact: no parsed job (None), here or in the cache, until a
    round needs it (the head of the queue, a position to write, its time came) or its body
    changes. Its parsed form was most of what such a job cost the operator's memory, and a
    pool holds thousands of them."""

    body: dict
    job: GenerationJob | None
    basis: tuple
    refused: Refusal | None
    queued: WaitingJob | None  # it waits in the queue, and no clock can change that (no attempt yet)
    held: SizingJob  # what it holds on a GPU, for sizing
    quiet_until: dt.datetime | None = None  # nothing to do for it until then (core.jobs.quiet_until)


@dataclass(frozen=True)
class QueueView:
    """A pool's queue as its last round left it, for writing new jobs' first statuses between
    rounds (see admit): the pool's spec and GPU classes, and its waiting jobs' `queue.ranks`."""

    spec: WorkerPoolSpec
    classes: list[GpuClass]
    ranks: tuple[int, ...]


@dataclass
class PoolMemory:
    mix: DemandMix = field(default_factory=DemandMix)
    observed: set[str] = field(default_factory=set)  # jobs already counted in the mix
    token_secret_for: str | None = None  # pool uid whose token Secret exists
    last_status: dict | None = None
    sizing: SizingState = field(default_factory=SizingState)
    workers: dict[str, WorkerHealth] = field(default_factory=dict)  # by pod name
    pod_refused: str | None = None  # why the API server refused the last worker pod, until one is created
    # (reason, message) of models the workers can never serve; each announced once by an Event
    model_problems: list[tuple[Reason, str]] = field(default_factory=list)
    seen: PoolSeen | None = None  # the last round's sizes, queue and inventories, for /metrics
    decisions: dict[str, JobDecision] = field(default_factory=dict)  # by job key, from the last round
    queue: QueueView | None = None  # set by each round; None until the first
    # Priorities of the jobs the first-status writer queued since the last round's snapshot.
    arrived: list[int] = field(default_factory=list)


@dataclass
class JobMemory:
    not_before: float = 0.0  # retry backoff: earliest next dispatch (monotonic)
    avoid: set[str] = field(default_factory=set)  # workers that lost or refused an attempt
    last_progress_write: float = 0.0
    cancel_sent: bool = False
    finished_attempt: int = 0  # the last attempt whose outcome has been written
    seen_on_worker: bool = False  # the current attempt has been reported by its worker
    refusals: int = 0  # dispatches refused in a row (for the backoff)


class Followers:
    """The follower task of each dispatched job attempt: one at a time per job, all cancelled
    on shutdown. A finished task's reference is dropped when it ends."""

    def __init__(self) -> None:
        self.tasks: dict[Key, tuple[int, asyncio.Task[None]]] = {}

    def running(self, key: Key, attempt: int) -> bool:
        held = self.tasks.get(key)
        return held is not None and held[0] == attempt and not held[1].done()

    def start(self, key: Key, attempt: int, follow: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self.running(key, attempt):
            return
        self.stop(key)
        task = asyncio.create_task(follow(), name=f"follow-{key[0]}/{key[1]}-{attempt}")
        self.tasks[key] = (attempt, task)
        task.add_done_callback(lambda done: self._ended(key, done))

    def _ended(self, key: Key, task: asyncio.Task[None]) -> None:
        if self.tasks.get(key, (0, None))[1] is task:
            del self.tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("follower of %s/%s failed", *key, exc_info=task.exception())

    def stop(self, key: Key) -> None:
        held = self.tasks.pop(key, None)
        if held is not None and not held[1].done():
            held[1].cancel()

    async def close(self) -> None:
        tasks = [task for _, task in self.tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()


@dataclass
class Operator:
    kube: Kube
    http: httpx.AsyncClient
    token_key: bytes
    worker_env: WorkerEnv
    worker_port: int = 8080
    progress_interval: float = 1.0
    # Concurrent API writes and worker calls of one round.
    concurrency: int = 16
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    clock: Callable[[], float] = time.monotonic
    cache: Cache = field(default_factory=Cache)
    followers: Followers = field(default_factory=Followers)
    pools: dict[Key, PoolMemory] = field(default_factory=dict)
    jobs: dict[Key, JobMemory] = field(default_factory=dict)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Jobs whose status a round or the first-status writer is writing now (see claim): the
    # other leaves them alone, so two writes of one job never race to the API server.
    writing: set[Key] = field(default_factory=set)

    def pool_token(self, namespace: str, pool: str, uid: str) -> str:
        """The pool's worker token, derived from the operator's key: never stored where it is read."""
        message = f"{namespace}/{pool}/{uid}".encode()
        return hmac.new(self.token_key, message, hashlib.sha256).hexdigest()

    def job(self, namespace: str, name: str) -> JobMemory:
        if (memory := self.jobs.get((namespace, name))) is None:  # not built on every lookup
            memory = self.jobs[(namespace, name)] = JobMemory()
        return memory

    def pool(self, namespace: str, name: str) -> PoolMemory:
        if (memory := self.pools.get((namespace, name))) is None:
            memory = self.pools[(namespace, name)] = PoolMemory()
        return memory

    def claim(self, key: Key) -> bool:
        """Holds job ``key`` for a status write the caller releases (``writing.discard``) once
        it has ended, run or not; False when another write holds it."""
        if key in self.writing:
            return False
        self.writing.add(key)
        return True

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """Runs a background task the operator keeps a reference to until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def close(self) -> None:
        await self.followers.close()
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.http.aclose()


def read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"{path}: the token key must be at least 16 bytes")
    return key
