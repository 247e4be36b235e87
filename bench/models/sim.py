"""A discrete-event replay of a fixed fleet serving a many-model trace (README.md says the
same for readers of the results).

- Each worker has one GPU of `Fleet.gpu_vram` running at most `Fleet.max_jobs_per_gpu` jobs.
  A GPU's memory holds resident models and the running jobs' working VRAM (`trace.JOB_VRAM`).
- A job placed on a GPU where its model is resident starts at once (a warm hit); where it is
  loading, it waits for that load; otherwise the GPU loads it: the worker's cache rule
  (`gpufleet_worker.modelcache.choose_evictions`, imported) evicts idle models, least
  recently used first, and the load takes the model's load time, plus a download first when
  the worker's disk does not have it yet. The job holds its slot while it waits.
- Policies choose where queued jobs go, each time something changes (an arrival, a load or a
  job ending): `gpufleet` is the operator's own round (`gpufleet.core.dispatch.plan`, hence
  `gpufleet.core.placement.place`) over the fleet as the workers' inventories would report
  it; `least-loaded` sends the first job that fits to the GPU with the fewest jobs,
  ignoring models; `preload` pins on every GPU the most popular models that fit, keeping
  room for one more model and a job, and sends a job to a GPU holding its model, else to the
  least loaded one.

Figures per job: *wait* runs from arrival to the start of inference, so it adds the queue and
any model load the job waited for. *GPU-s loading* is GPU time spent loading models; *GPU-s
held* is the fleet's GPUs times the time until the last job ended.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench.models.trace import DOWNLOAD_BYTES_PER_S, JOB_VRAM, Trace, TraceJob, load_time
from gpufleet.core import dispatch
from gpufleet.core.placement import WARM_QUEUE_PER_COPY, Demand, DemandMix, Gpu, Worker, observe
from gpufleet_worker.modelcache import CachedModel, choose_evictions

PRODUCT = "NVIDIA-L4"


@dataclass(frozen=True)
class Fleet:
    gpus: int
    gpu_vram: int
    max_jobs_per_gpu: int = 1


@dataclass(eq=False)
class Copy:
    """A model in one GPU's memory."""

    vram: int
    last_used: float
    ready_at: float  # when its load ends (<= now: resident)
    in_use: int = 0  # jobs placed on this GPU that need it
    pinned: bool = False


@dataclass(eq=False)
class GpuState:
    index: int
    total: int
    copies: dict[str, Copy] = field(default_factory=dict)
    disk: set[str] = field(default_factory=set)
    max_jobs: int = 1
    jobs: int = 0
    jobs_vram: int = 0

    def free(self) -> int:
        return self.total - self.jobs_vram - sum(c.vram for c in self.copies.values())

    def cached(self, now: float) -> list[CachedModel]:
        return [
            CachedModel(name, c.vram, c.last_used, c.in_use + (c.ready_at > now), c.pinned)
            for name, c in self.copies.items()
        ]

    def can_take(self, vram: int, now: float, model: str, model_vram: int) -> bool:
        if self.jobs >= self.max_jobs:
            return False
        if model in self.copies:
            return self.free() >= vram
        return choose_evictions(self.cached(now), vram + model_vram, self.free()) is not None


@dataclass
class Result:
    policy: str
    gpus: int
    waits: np.ndarray  # seconds from arrival to the start of inference, per finished job
    warm_hits: int
    loads: int
    evictions: int
    load_gpu_s: float
    held_gpu_s: float
    unfinished: int

    @property
    def warm_rate(self) -> float:
        return self.warm_hits / max(len(self.waits), 1)


# A policy starts queued jobs (`Sim.start`) when called with the time.
Policy = Callable[["Sim", float], None]


class Sim:
    def __init__(self, trace: Trace, fleet: Fleet, seed: int) -> None:
        self.trace, self.fleet = trace, fleet
        self.rng = np.random.default_rng(seed)
        self.gpus = [GpuState(i, fleet.gpu_vram, max_jobs=fleet.max_jobs_per_gpu) for i in range(fleet.gpus)]
        self.queue: deque[TraceJob] = deque()
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.waits: list[float] = []
        self.warm_hits = self.loads = self.evictions = 0
        self.load_gpu_s = 0.0
        self.last_end = 0.0

    def at(self, time: float, kind: str, payload: object) -> None:
        heapq.heappush(self.events, (time, next(self.seq), kind, payload))

    def preload(self, gpu: GpuState, model: str) -> None:
        gpu.copies[model] = Copy(self.trace.model(model).vram, 0.0, 0.0, pinned=True)
        gpu.disk.add(model)

    def run(self, name: str, policy: Policy, limit_s: float | None = None) -> Result:
        for job in self.trace.jobs:
            self.at(job.arrival, "arrive", job)
        end = limit_s if limit_s is not None else float("inf")
        while self.events and self.events[0][0] <= end:
            now = self.events[0][0]
            while self.events and self.events[0][0] == now:
                _, _, kind, payload = heapq.heappop(self.events)
                if kind == "arrive":
                    self.queue.append(payload)  # type: ignore[arg-type]
                elif kind == "finish":
                    self.finish(now, *payload)  # type: ignore[misc]
            if self.queue and any(g.jobs < g.max_jobs for g in self.gpus):
                policy(self, now)
        held = self.fleet.gpus * self.last_end
        return Result(
            name,
            self.fleet.gpus,
            np.array(self.waits),
            self.warm_hits,
            self.loads,
            self.evictions,
            self.load_gpu_s,
            held,
            len(self.trace.jobs) - len(self.waits),
        )

    def start(self, now: float, job: TraceJob, gpu: GpuState) -> None:
        self.queue.remove(job)
        model = self.trace.model(job.model)
        copy = gpu.copies.get(job.model)
        if copy is None:
            evicted = choose_evictions(gpu.cached(now), JOB_VRAM + model.vram, gpu.free())
            assert evicted is not None, f"{job.model} placed on GPU {gpu.index} without room"
            for name in evicted:
                del gpu.copies[name]
            self.evictions += len(evicted)
            seconds = load_time(model, self.rng)
            if job.model not in gpu.disk:
                seconds += model.vram / DOWNLOAD_BYTES_PER_S
                gpu.disk.add(job.model)
            copy = gpu.copies[job.model] = Copy(model.vram, now, now + seconds)
            self.loads += 1
            self.load_gpu_s += seconds
        elif copy.ready_at <= now:
            self.warm_hits += 1
        begins = max(now, copy.ready_at)
        copy.in_use += 1
        copy.last_used = now
        gpu.jobs += 1
        gpu.jobs_vram += JOB_VRAM
        assert gpu.free() >= 0 and gpu.jobs <= gpu.max_jobs, f"GPU {gpu.index} over-committed"
        self.waits.append(begins - job.arrival)
        self.at(begins + job.work_s, "finish", (gpu.index, job.model))

    def finish(self, now: float, index: int, model: str) -> None:
        gpu = self.gpus[index]
        copy = gpu.copies[model]
        copy.in_use -= 1
        copy.last_used = now
        gpu.jobs -= 1
        gpu.jobs_vram -= JOB_VRAM
        self.last_end = max(self.last_end, now)


# --- policies ------------------------------------------------------------------------------

# A round looks at the first jobs of the queue only: this many per free job slot, at most
# QUEUE_WINDOW (the jobs behind rarely get a slot, and long bursts stay fast to replay).
WINDOW_PER_SLOT, QUEUE_WINDOW = 8, 64


class Gpufleet:
    """The operator's dispatch round, on the fleet as the workers' inventories report it."""

    def __init__(self, warm_queue_per_copy: int = WARM_QUEUE_PER_COPY) -> None:
        self.warm_queue_per_copy = warm_queue_per_copy
        self.name = (
            "gpufleet" if warm_queue_per_copy == WARM_QUEUE_PER_COPY else f"gpufleet/{warm_queue_per_copy}"
        )
        self.mix = DemandMix()
        self.seen: set[int] = set()

    def __call__(self, sim: Sim, now: float) -> None:
        window = list(itertools.islice(sim.queue, _window(sim)))
        for job in window:
            if job.id not in self.seen:
                self.seen.add(job.id)
                self.mix = observe(self.mix, Demand(vram=JOB_VRAM))
        workers = [self.worker(g, now) for g in sim.gpus]
        queued = [
            dispatch.QueuedJob(str(job.id), job.model, JOB_VRAM, model_vram=sim.trace.model(job.model).vram)
            for job in window
        ]
        plan = dispatch.plan(queued, workers, self.mix, warm_queue_per_copy=self.warm_queue_per_copy)
        by_id = {str(job.id): job for job in window}
        for a in plan.assignments:
            sim.start(now, by_id[a.key], sim.gpus[a.placement.worker_index])

    @staticmethod
    def worker(g: GpuState, now: float) -> Worker:
        idle = sorted(
            (m for m in g.cached(now) if m.evictable),
            key=lambda m: (m.last_used, m.name),
        )
        return Worker(
            f"w{g.index}",
            (
                Gpu(
                    f"gpu-{g.index}",
                    PRODUCT,
                    g.total,
                    g.free(),
                    g.jobs,
                    g.max_jobs,
                    models=frozenset(g.copies),
                    idle_models=tuple((m.name, m.size_bytes) for m in idle),
                ),
            ),
            on_disk=frozenset(g.disk),
        )


class LeastLoaded:
    """Model-oblivious: the first queued job that fits goes to the GPU with the fewest jobs."""

    name = "least-loaded"

    def __call__(self, sim: Sim, now: float) -> None:
        _greedy(sim, now, lambda g, job: (g.jobs, g.index))


class Preload:
    """Every GPU pins the most popular models that fit, leaving room for the largest model and
    a job; a job goes to a GPU holding its model, else to the least loaded."""

    name = "preload"

    def __init__(self, sim: Sim) -> None:
        largest = max(m.vram for m in sim.trace.models)
        budget = sim.fleet.gpu_vram - largest - JOB_VRAM * sim.fleet.max_jobs_per_gpu
        for g in sim.gpus:
            room = budget
            for m in sorted(sim.trace.models, key=lambda m: -m.popularity):
                if m.vram <= room:
                    sim.preload(g, m.name)
                    room -= m.vram

    def __call__(self, sim: Sim, now: float) -> None:
        _greedy(sim, now, lambda g, job: (job.model not in g.copies, g.jobs, g.index))


def _greedy(sim: Sim, now: float, key: Callable[[GpuState, TraceJob], tuple[object, ...]]) -> None:
    """Queue order; each job to the best GPU by `key` that can take it now (backfill: a job
    that fits nowhere is skipped)."""
    for job in list(itertools.islice(sim.queue, _window(sim))):
        if all(g.jobs >= g.max_jobs for g in sim.gpus):
            return
        vram = sim.trace.model(job.model).vram
        fits = [g for g in sim.gpus if g.can_take(JOB_VRAM, now, job.model, vram)]
        if fits:
            sim.start(now, job, min(fits, key=lambda g: key(g, job)))


def _window(sim: Sim) -> int:
    slots = sum(g.max_jobs - g.jobs for g in sim.gpus)
    return min(QUEUE_WINDOW, WINDOW_PER_SLOT * slots)
