"""A discrete-event simulation of one WorkerPool: pods, model loads, GPU sharing, the queue.

What it models (README.md says the same for readers of the results):

- A worker is a pod with one GPU. It holds its GPU from creation until it exits. It serves
  after a pod start delay (scheduling and container start, uniform `Timing.pod_start_s`).
- Each worker's GPU memory is the worker's own: a `gpufleet_worker.admission.GpuBudget` of
  `Pool.gpu_vram`, admitted into by the worker's rule (`admission.choose_gpu`, hence the cache
  policy `modelcache.choose_evictions`; imported, not copied). A job reserves its working VRAM
  and needs its model resident beside it; a model not resident is loaded, evicting idle models
  least recently used first, never one a placed job needs or one being loaded. A load takes a
  lognormal time, median `Timing.load_median_s` and p90 `Timing.load_p90_s` (bench/models'
  published figures); jobs placed while their model loads wait for that load.
- Up to `Pool.max_jobs_per_gpu` jobs share a GPU when their VRAM fits. Jobs sharing it run
  slower: k jobs together progress at `throughput(k)` GPUs' worth, split evenly.
- The queue is FIFO (requeued jobs go to the back). The operator's own dispatch round
  (`gpufleet.core.dispatch.plan`, hence `gpufleet.core.placement.place`) places queued jobs on
  ready, serving workers, fed each worker's GPU as its inventory reports it.
- A draining worker takes no new jobs and exits once idle. A terminating worker (a pod
  deleted by a Deployment) takes no new jobs; after the grace period its jobs are killed and
  requeued.

Figures: a job's *queue wait* runs from its arrival to its placement on a worker (for a job
whose pod was killed, to its last placement). Its *start delay* runs on to the start of the
inference that completes it, so it adds the model load the job waited for. A *cold start* is
one model load. *GPU-seconds used* is the time GPUs were held by the pool's
pods; *idle* is the part of it in which a GPU neither ran a job nor loaded a model.

`Sim.cache_log` records every admission, load, eviction and release with the GPU's memory
after it, so the cache's invariants can be checked from the simulation's own records.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bench.autoscale.trace import GiB, Trace, TraceJob
from bench.models.trace import LOAD_MEDIAN_S, LOAD_P90_S
from gpufleet.core import dispatch
from gpufleet.core.placement import WARM_QUEUE_PER_COPY, Demand, DemandMix, Gpu, observe
from gpufleet.core.placement import Worker as WorkerInventory
from gpufleet_worker.admission import Admitted, GpuBudget, choose_gpu
from gpufleet_worker.modelcache import CachedModel

GPU_PRODUCT = "NVIDIA-L4"
# A dispatch round looks at the first jobs of the queue only: this many per free job slot, at
# most QUEUE_WINDOW (the jobs behind rarely get a slot, and long bursts stay fast to replay).
WINDOW_PER_SLOT, QUEUE_WINDOW = 8, 64


@dataclass(frozen=True)
class Pool:
    """The simulated WorkerPool: its GPUs and its autoscaling fields."""

    gpu_vram: int = 24 * GiB
    max_jobs_per_gpu: int = 2
    min_replicas: int = 0
    max_replicas: int = 16
    target_jobs_per_worker: int = 2
    scale_up_stabilization_s: float = 0
    scale_down_stabilization_s: float = 120  # as in examples/workerpool.yaml
    idle_before_zero_s: float = 300
    sharing_gain: float = 0.3  # each extra job on a GPU adds this much throughput

    def throughput(self, k: int) -> float:
        return 1.0 + self.sharing_gain * (k - 1)

    def concurrency(self, vram: int) -> int:
        return min(self.max_jobs_per_gpu, self.gpu_vram // vram)


@dataclass(frozen=True)
class Timing:
    pod_start_s: tuple[float, float] = (10.0, 20.0)
    load_median_s: float = LOAD_MEDIAN_S
    load_p90_s: float = LOAD_P90_S
    load_bounds_s: tuple[float, float] = (5.0, 300.0)
    termination_grace_s: float = 30.0  # Kubernetes' default terminationGracePeriodSeconds

    @property
    def load_sigma(self) -> float:
        return math.log(self.load_p90_s / self.load_median_s) / 1.2815515655446004  # z(0.9)


@dataclass(eq=False)
class SimJob:
    spec: TraceJob
    enqueued_at: float
    remaining: float
    placed: float | None = None  # when the current attempt went to a worker
    start: float | None = None  # inference start of the current attempt
    finish: float | None = None
    worker: Worker | None = None
    attempts: int = 0


@dataclass(eq=False)
class Worker:
    name: str
    created_at: float
    budget: GpuBudget  # its GPU's memory: models resident or loading, and the jobs' reservations
    ready: bool = False
    draining: bool = False
    terminating: bool = False
    loading: dict[str, float] = field(default_factory=dict)  # model -> load done at
    jobs: list[SimJob] = field(default_factory=list)  # placed: loading or running
    running: list[SimJob] = field(default_factory=list)
    last_update: float = 0.0
    version: int = 0
    active_since: float | None = None
    active_s: float = 0.0
    ready_at: float | None = None

    @property
    def serving(self) -> bool:
        return not (self.draining or self.terminating)

    @property
    def accepting(self) -> bool:
        return self.ready and self.serving

    @property
    def models(self) -> frozenset[str]:
        """Models resident or loading on its GPU."""
        return frozenset(self.budget.models)


@dataclass(frozen=True)
class CacheRecord:
    """One change to a worker's GPU memory, and the memory after it."""

    time: float
    worker: str
    kind: str  # "admit" (a job's reservation), "load" (a load begins), "evict", "release" (a job ends)
    model: str
    models_bytes: int  # resident and loading models
    jobs_bytes: int  # the jobs' reservations
    total_bytes: int
    in_use: int  # the model's uses when it was evicted (jobs that need it, plus one while loading)
    needed: frozenset[str]  # models of the jobs placed on the worker at that moment


@dataclass(frozen=True)
class Result:
    policy: str
    trace: str
    waits: np.ndarray  # seconds from arrival to the final placement on a worker, per finished job
    start_delays: np.ndarray  # seconds from arrival to the start of the final inference
    cold_starts: int
    evictions: int
    warm_hit_rate: float  # placements on a worker where the job's model was resident
    gpu_s: float
    idle_gpu_s: float
    interrupted: int  # job attempts killed with their pod
    unfinished: int
    peak_workers: int


@dataclass(frozen=True)
class Loop:
    """A policy's control loop: `body` runs every `period_s` seconds from `offset_s`."""

    period_s: float
    offset_s: float
    body: Callable[[Sim], None]


class Sim:
    def __init__(
        self,
        trace: Trace,
        pool: Pool,
        timing: Timing,
        seed: int,
        tail_s: float = 3600.0,
        warm_queue_per_copy: int = WARM_QUEUE_PER_COPY,
    ) -> None:
        """``warm_queue_per_copy`` is the operator's placer's (`placement.place`)."""
        self.trace, self.pool, self.timing = trace, pool, timing
        self.warm_queue_per_copy = warm_queue_per_copy
        self.rng = np.random.default_rng(seed)
        self.end = trace.horizon + tail_s
        self.now = 0.0
        self.jobs = [SimJob(j, j.arrival, j.work) for j in trace.jobs]
        self.model_vram = {j.model: j.model_vram for j in trace.jobs}
        self.queue: list[SimJob] = []
        self.workers: dict[str, Worker] = {}
        # (time, sequence, kind, payload): "arrive" SimJob, "tick" loop index, otherwise
        # (Worker, detail): "ready" / "kill" None, "load" the model, "finish" the worker's version.
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._names = itertools.count()
        self.mix = DemandMix()  # the operator's record of recent demands, for its placer
        self.cold_starts = 0
        self.evictions = 0
        self.placements = self.warm_placements = 0
        self.interrupted = 0
        self.gpu_s = 0.0
        self.idle_gpu_s = 0.0
        self.peak_workers = 0
        self.cache_log: list[CacheRecord] = []

    # --- what policies do -------------------------------------------------------------------

    def create_worker(self) -> Worker:
        name = f"w{next(self._names)}"
        w = Worker(name, self.now, GpuBudget(f"gpu-{name}", self.pool.gpu_vram), last_update=self.now)
        self.workers[w.name] = w
        self.peak_workers = max(self.peak_workers, len(self.workers))
        self._push(self.now + self.rng.uniform(*self.timing.pod_start_s), "ready", (w, None))
        return w

    def drain(self, w: Worker) -> None:
        w.draining = True
        if not w.jobs:
            self._remove(w)

    def resume(self, w: Worker) -> None:
        w.draining = False
        self._dispatch()

    def terminate(self, w: Worker) -> None:
        """Delete the pod: it takes no new jobs, and its jobs die after the grace period."""
        w.terminating = True
        if not w.jobs:
            self._remove(w)
        else:
            self._push(self.now + self.timing.termination_grace_s, "kill", (w, None))

    def queued_and_running(self) -> int:
        return len(self.queue) + sum(len(w.jobs) for w in self.workers.values())

    def load_ahead(self, w: Worker, model: str) -> bool:
        """Load `model` on idle `w` ahead of its jobs, evicting by the worker's rule (the oracle
        does this); False when it does not fit even so."""
        decision = choose_gpu([w.budget], model, self.model_vram[model], 0, self.pool.max_jobs_per_gpu)
        if not isinstance(decision, Admitted) or decision.resident or decision.loading:
            return False
        self._evict(w, decision.evict)
        self._load(w, model, uses=1)
        return True

    # --- the run ----------------------------------------------------------------------------

    def run(self, policy_name: str, loops: list[Loop]) -> Result:
        for job in self.jobs:
            self._push(job.spec.arrival, "arrive", job)
        for i, loop in enumerate(loops):
            self._push(loop.offset_s, "tick", i)
        while self._events:
            t, _, kind, payload = heapq.heappop(self._events)
            if t > self.end:
                break
            self.now = t
            if kind == "arrive":
                self.queue.append(payload)
                self.mix = observe(self.mix, Demand(vram=payload.spec.vram))
                self._dispatch()
            elif kind == "tick":
                loop = loops[payload]
                loop.body(self)
                self._push(t + loop.period_s, "tick", payload)
            else:
                worker, detail = payload
                if worker.name not in self.workers or self.workers[worker.name] is not worker:
                    continue  # gone
                if kind == "ready":
                    worker.ready, worker.ready_at = True, t
                    self._dispatch()
                elif kind == "load":
                    self._loaded(worker, detail)
                elif kind == "finish" and detail == worker.version:
                    self._finished(worker)
                elif kind == "kill":
                    self._kill(worker)
        self.now = self.end
        for w in list(self.workers.values()):
            self._remove(w)
        done = [j for j in self.jobs if j.finish is not None]
        return Result(
            policy=policy_name,
            trace=self.trace.name,
            waits=np.array([(j.placed or 0.0) - j.spec.arrival for j in done]),
            start_delays=np.array([(j.start or 0.0) - j.spec.arrival for j in done]),
            cold_starts=self.cold_starts,
            evictions=self.evictions,
            warm_hit_rate=self.warm_placements / self.placements if self.placements else 0.0,
            gpu_s=self.gpu_s,
            idle_gpu_s=self.idle_gpu_s,
            interrupted=self.interrupted,
            unfinished=len(self.jobs) - len(done),
            peak_workers=self.peak_workers,
        )

    # --- mechanics --------------------------------------------------------------------------

    def _push(self, t: float, kind: str, payload: Any) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, payload))

    def _inventory(self, w: Worker) -> WorkerInventory:
        """The worker as the operator's placer sees it: its GPU as the inventory reports it."""
        budget = w.budget
        idle = sorted((m for m in budget.models.values() if m.evictable), key=lambda m: (m.last_used, m.name))
        gpu = Gpu(
            budget.uuid,
            GPU_PRODUCT,
            budget.total_bytes,
            budget.admittable_bytes,
            len(budget.reservations),
            self.pool.max_jobs_per_gpu,
            models=frozenset(budget.models),
            idle_models=tuple((m.name, m.size_bytes) for m in idle),
        )
        return WorkerInventory(w.name, (gpu,), ready=w.ready, draining=not w.serving)

    def _dispatch(self) -> None:
        """The operator's dispatch round over the head of the queue."""
        if not self.queue:
            return
        accepting = [w for w in self.workers.values() if w.accepting]
        slots = sum(self.pool.max_jobs_per_gpu - len(w.jobs) for w in accepting)
        if not slots:
            return
        window = self.queue[: min(QUEUE_WINDOW, WINDOW_PER_SLOT * slots)]
        queued = [
            dispatch.QueuedJob(str(j.spec.id), j.spec.model, j.spec.vram, model_vram=j.spec.model_vram)
            for j in window
        ]
        plan = dispatch.plan(
            queued,
            [self._inventory(w) for w in accepting],
            self.mix,
            warm_queue_per_copy=self.warm_queue_per_copy,
        )
        if not plan.assignments:
            return
        by_id = {str(j.spec.id): j for j in window}
        placed = set()
        for a in plan.assignments:
            job = by_id[a.key]
            self._place(job, self.workers[a.placement.worker])
            placed.add(id(job))
        self.queue = [j for j in self.queue if id(j) not in placed]

    def _place(self, job: SimJob, w: Worker) -> None:
        """The worker admits the job by its own rule: evict, reserve, then load or start."""
        model = job.spec.model
        decision = choose_gpu(
            [w.budget], model, job.spec.model_vram, job.spec.vram, self.pool.max_jobs_per_gpu
        )
        assert isinstance(decision, Admitted), f"the placer and {w.name}'s admission disagree: {decision}"
        job.worker, job.placed = w, self.now
        job.attempts += 1
        w.jobs.append(job)
        self._evict(w, decision.evict)
        budget = w.budget
        budget.reservations[str(job.spec.id)] = job.spec.vram
        self.placements += 1
        if decision.resident or decision.loading:
            cached = budget.models[model]
            budget.models[model] = replace(cached, in_use=cached.in_use + 1, last_used=self.now)
            self._record(w, "admit", model)
            if decision.resident:
                self.warm_placements += 1
                self._start(w, job)
        else:
            self._record(w, "admit", model)
            self._load(w, model, uses=2)  # the job's use and the load's

    def _evict(self, w: Worker, names: tuple[str, ...]) -> None:
        for name in names:
            in_use = w.budget.models[name].in_use
            del w.budget.models[name]
            self.evictions += 1
            self._record(w, "evict", name, in_use=in_use)

    def _load(self, w: Worker, model: str, uses: int) -> None:
        """Start loading `model` on `w`; the load holds one of its `uses` until it ends."""
        lo, hi = self.timing.load_bounds_s
        median, sigma = self.timing.load_median_s, self.timing.load_sigma
        seconds = float(np.clip(self.rng.lognormal(math.log(median), sigma), lo, hi))
        w.budget.models[model] = CachedModel(model, self.model_vram[model], self.now, in_use=uses)
        w.budget.loading.add(model)
        w.loading[model] = self.now + seconds
        self.cold_starts += 1
        self._record(w, "load", model)
        self._push(self.now + seconds, "load", (w, model))
        self._activity(w)

    def _loaded(self, w: Worker, model: str) -> None:
        del w.loading[model]
        w.budget.loading.discard(model)
        cached = w.budget.models[model]
        w.budget.models[model] = replace(cached, in_use=cached.in_use - 1, last_used=self.now)
        for job in w.jobs:
            if job.spec.model == model and job.start is None:
                self._start(w, job)
        self._activity(w)

    def _record(self, w: Worker, kind: str, model: str, in_use: int = 0) -> None:
        budget = w.budget
        self.cache_log.append(
            CacheRecord(
                self.now,
                w.name,
                kind,
                model,
                budget.models_bytes,
                budget.jobs_bytes,
                budget.total_bytes,
                in_use,
                frozenset(j.spec.model for j in w.jobs),
            )
        )

    def _advance(self, w: Worker) -> None:
        if w.running:
            rate = self.pool.throughput(len(w.running)) / len(w.running)
            for job in w.running:
                job.remaining -= (self.now - w.last_update) * rate
        w.last_update = self.now

    def _reschedule(self, w: Worker) -> None:
        w.version += 1
        if w.running:
            rate = self.pool.throughput(len(w.running)) / len(w.running)
            soonest = min(j.remaining for j in w.running)
            self._push(self.now + max(soonest, 0.0) / rate, "finish", (w, w.version))

    def _start(self, w: Worker, job: SimJob) -> None:
        self._advance(w)
        job.start = self.now
        w.running.append(job)
        self._reschedule(w)
        self._activity(w)

    def _finished(self, w: Worker) -> None:
        self._advance(w)
        done = [j for j in w.running if j.remaining <= 1e-6]
        for job in done:
            job.finish = self.now
            w.running.remove(job)
            w.jobs.remove(job)
            del w.budget.reservations[str(job.spec.id)]
            cached = w.budget.models[job.spec.model]
            w.budget.models[cached.name] = replace(cached, in_use=cached.in_use - 1, last_used=self.now)
            self._record(w, "release", job.spec.model)
        self._reschedule(w)
        self._activity(w)
        if not w.serving and not w.jobs:
            self._remove(w)
        self._dispatch()

    def _kill(self, w: Worker) -> None:
        for job in w.jobs:
            self.interrupted += 1
            job.placed, job.start, job.worker, job.remaining = None, None, None, job.spec.work
            job.enqueued_at = self.now
            self.queue.append(job)
        w.jobs, w.running = [], []
        self._remove(w)
        self._dispatch()

    def _activity(self, w: Worker) -> None:
        active = bool(w.running or w.loading)
        if active and w.active_since is None:
            w.active_since = self.now
        elif not active and w.active_since is not None:
            w.active_s += self.now - w.active_since
            w.active_since = None

    def _remove(self, w: Worker) -> None:
        w.running, w.loading = [], {}
        self._activity(w)
        held = self.now - w.created_at
        self.gpu_s += held
        self.idle_gpu_s += held - w.active_s
        del self.workers[w.name]
