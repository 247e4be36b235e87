"""How many workers a pool should have, and which ones to drain: one pure decision.

The operator calls `decide` on every reconcile of a pool, with the pool's policy, what it
observes (queued and running jobs, the worker pods), the `SizingState` it stored after the
previous call, and the time. It then writes `Decision.desired_replicas` to
``status.desiredReplicas``, marks the workers in `Decision.drain` draining and returns those in
`Decision.resume` to service, stores `Decision.state` for the next call, and reports a change
of size with an Event whose reason is `Decision.reason` and whose message is
`Decision.message()`. Nothing here reads a clock or talks to Kubernetes.

Sizing. Every queued or running job takes a share of one worker::

    concurrency(job) = gpus_per_worker * min(maxJobsPerGPU, floor(gpu_vram / job.vram))
    share(job)       = 1 / min(targetJobsPerWorker, concurrency(job))

A worker is full at whichever limit comes first: the jobs the pool's author wants per worker,
or the jobs of that size its GPUs can actually run at once. A target of 4 on a 24 GiB GPU with
10 GiB jobs gives 2 jobs per worker, not 4 (two would wait while the pool may grow); a target
of 1 gives 1. The recommendation is the sum of shares rounded up, within
[minReplicas, maxReplicas]. Jobs too big for one GPU of the pool count for nothing (more
workers would not run them; the operator reports them Unschedulable).

Models (the pool's, given as `Model`s). Workers load models on demand, and a new worker
starts with none. A served model the queue needs that is resident on no serving, ready worker
must be loaded first, and its load holds a job slot for as long as a load takes (often longer
than the jobs themselves): each such *cold* model adds the share of one more of its jobs. A
model's ``minWarm`` keeps enough workers to hold that many copies on separate GPUs, with their
VRAM: the size never falls below
``max(ceil(minWarm / gpus), ceil(sum(minWarm * vram) / (gpus * gpu_vram)))``, even when
idle, and a worker holding one of a model's last ``minWarm`` copies is drained last.

Scale to zero. While the pool has had no queued or running job it can run for less than
idleSecondsBeforeZero, a pool that has workers keeps one warm (it rides out a short lull).
Once idle that long, and minReplicas is 0, the pool goes to zero at once: the idle time is
the stabilization of that step. The first job then recommends at least one worker,
subject to the scale-up window like any other increase.

Stabilization is the HorizontalPodAutoscaler's: the size rises only to the *lowest*
recommendation made within the last scaleUpStabilizationSeconds, and falls only to the
*highest* made within the last scaleDownStabilizationSeconds (each window including the
current recommendation). `SizingState.recommendations` keeps those recent recommendations.

Removal. `desired_replicas` counts workers that serve (not draining). When more serve, idle
ones are drained: first pods the cluster cannot schedule, then pods not ready yet, then ready
workers holding none of a model's last ``minWarm`` copies, then those whose loaded models the
queue wants least (fewest queued jobs for them, then longest
since a job last wanted them), then those with fewer models loaded, then the newest. A busy
worker is never chosen; it is drained on a later call once idle, if still in excess. When more
workers are wanted than serve, draining workers go back to service (warm) before new pods are
needed: the caller creates ``desired_replicas`` minus the serving workers that remain.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

# Models remembered in `SizingState.model_last_wanted`; a pool serves at most 32 models.
MAX_REMEMBERED_MODELS = 64


class Reason(StrEnum):
    """Why the size is what it is; the Event reason of a scaling decision."""

    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    SCALE_TO_ZERO = "ScaleToZero"
    SCALE_FROM_ZERO = "ScaleFromZero"
    HOLD = "Hold"
    AT_MAX = "AtMax"  # unchanged, and the queue wants more than maxReplicas
    AT_MIN = "AtMin"  # unchanged, and the queue wants fewer than minReplicas
    FIXED = "Fixed"  # no autoscaling policy: spec.replicas, as set by hand, HPA or KEDA


def _require(ok: bool, field_name: str, rule: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{field_name} {rule}, got {value!r}")


@dataclass(frozen=True)
class Policy:
    """A pool's ``spec.autoscaling``, with the same meanings (times in seconds)."""

    min_replicas: int
    max_replicas: int
    target_jobs_per_worker: int = 1
    scale_up_stabilization_seconds: float = 0
    scale_down_stabilization_seconds: float = 300
    idle_seconds_before_zero: float = 300

    def __post_init__(self) -> None:
        _require(self.min_replicas >= 0, "autoscaling.minReplicas", "must be >= 0", self.min_replicas)
        _require(self.max_replicas >= 1, "autoscaling.maxReplicas", "must be >= 1", self.max_replicas)
        _require(
            self.min_replicas <= self.max_replicas,
            "autoscaling.minReplicas",
            f"must be <= autoscaling.maxReplicas ({self.max_replicas})",
            self.min_replicas,
        )
        _require(
            self.target_jobs_per_worker >= 1,
            "autoscaling.targetJobsPerWorker",
            "must be >= 1",
            self.target_jobs_per_worker,
        )
        for name, value in (
            ("autoscaling.scaleUpStabilizationSeconds", self.scale_up_stabilization_seconds),
            ("autoscaling.scaleDownStabilizationSeconds", self.scale_down_stabilization_seconds),
            ("autoscaling.idleSecondsBeforeZero", self.idle_seconds_before_zero),
        ):
            _require(math.isfinite(value) and value >= 0, name, "must be a finite number >= 0", value)


@dataclass(frozen=True)
class WorkerShape:
    """What one worker of the pool can hold: ``spec.gpu`` with the VRAM of each GPU.

    ``gpu_vram`` is the smallest GPU the pool's workers get: the VRAM observed on its ready
    workers, else ``gpu.minMemory``. Sizing from the smallest never promises more than any
    worker can run.
    """

    gpu_vram: int  # bytes
    gpus_per_worker: int = 1
    max_jobs_per_gpu: int = 1

    def __post_init__(self) -> None:
        _require(self.gpu_vram > 0, "gpu.minMemory", "(VRAM per GPU) must be > 0 bytes", self.gpu_vram)
        _require(self.gpus_per_worker >= 1, "gpu.count", "must be >= 1", self.gpus_per_worker)
        _require(self.max_jobs_per_gpu >= 1, "gpu.maxJobsPerGPU", "must be >= 1", self.max_jobs_per_gpu)

    def concurrency(self, job_vram: int) -> int:
        """Jobs of this VRAM one worker runs at once; 0 when one does not fit a GPU."""
        return self.gpus_per_worker * min(self.max_jobs_per_gpu, self.gpu_vram // job_vram)


@dataclass(frozen=True)
class Job:
    """A queued or running job, as sizing sees it."""

    name: str
    vram: int  # bytes: spec.vram or its estimate
    model: str
    priority: int = 0

    def __post_init__(self) -> None:
        _require(self.vram > 0, f"job {self.name}: vram", "must be > 0 bytes", self.vram)


@dataclass(frozen=True)
class Model:
    """A model the pool serves, as sizing sees it."""

    name: str
    vram: int  # bytes one resident copy holds
    min_warm: int = 0  # copies to keep resident

    def __post_init__(self) -> None:
        _require(self.vram >= 0, f"model {self.name}: vram", "must be >= 0 bytes", self.vram)
        _require(self.min_warm >= 0, f"model {self.name}: minWarm", "must be >= 0", self.min_warm)


def warm_floor(models: Iterable[Model], shape: WorkerShape) -> int:
    """Workers that hold every model's ``minWarm`` copies, each copy on its own GPU."""
    wanted = [m for m in models if m.min_warm]
    if not wanted:
        return 0
    per_gpu = math.ceil(max(m.min_warm for m in wanted) / shape.gpus_per_worker)
    vram = sum(m.min_warm * m.vram for m in wanted)
    return max(per_gpu, math.ceil(vram / (shape.gpus_per_worker * shape.gpu_vram)))


@dataclass(frozen=True)
class WorkerView:
    """A worker pod of the pool."""

    name: str
    ready: bool  # serving: its worker answers and reported its GPUs
    schedulable: bool = True  # False: the pod is Pending and the scheduler found no node for it
    draining: bool = False
    busy_jobs: int = 0  # jobs placed on it and not finished
    gpu_vram_total: tuple[int, ...] = ()  # bytes, per GPU, as the worker reports them
    loaded_models: frozenset[str] = frozenset()  # resident (or loading) on its GPUs
    started_at: float | None = None  # seconds; pod creation

    def __post_init__(self) -> None:
        _require(self.busy_jobs >= 0, f"worker {self.name}: busy_jobs", "must be >= 0", self.busy_jobs)
        _require(
            all(v > 0 for v in self.gpu_vram_total),
            f"worker {self.name}: gpu_vram_total",
            "must all be > 0 bytes",
            self.gpu_vram_total,
        )
        _require(
            self.schedulable or not self.ready,
            f"worker {self.name}: ready",
            "cannot be true for a pod that is not scheduled",
            self.ready,
        )


def worker_shape(
    min_memory: int, gpus_per_worker: int, max_jobs_per_gpu: int, workers: Iterable[WorkerView] = ()
) -> WorkerShape:
    """The shape to size with: the smallest GPU seen on a ready worker, else ``gpu.minMemory``."""
    seen = [v for w in workers if w.ready for v in w.gpu_vram_total]
    return WorkerShape(
        gpu_vram=min(seen) if seen else min_memory,
        gpus_per_worker=gpus_per_worker,
        max_jobs_per_gpu=max_jobs_per_gpu,
    )


@dataclass(frozen=True)
class SizingState:
    """What the caller stores between calls (one per pool) and passes back in.

    A fresh `SizingState()` is right for a new pool and after an operator restart: the
    previous size is then taken from the serving workers, and idle time counts from then.
    """

    desired_replicas: int | None = None  # the last decision
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, recommendation) within the windows
    idle_since: float | None = None  # when the pool last had no queued or running job; None: busy
    model_last_wanted: tuple[tuple[str, float], ...] = ()  # (model, last time a job wanted it)


@dataclass(frozen=True)
class SizingInputs:
    """What led to a decision, for the Event message and the logs."""

    queued: int
    running: int
    unfittable: int  # jobs needing more VRAM than one GPU of the pool has
    demand: float  # workers' worth of queued + running jobs
    jobs_per_worker: tuple[int, int] | None  # fewest and most jobs one worker may take; None: no jobs
    recommended: int  # after min/max and the zero rules, before stabilization
    previous: int
    min_replicas: int | None
    max_replicas: int | None
    idle_seconds: float | None  # how long the pool has had no job; None: busy
    ready: int
    starting: int  # scheduled, not ready yet
    unschedulable: int
    draining: int
    cold_models: int = 0  # models the queue needs that no serving, ready worker holds
    warm_floor: int = 0  # workers the models' minWarm copies need


@dataclass(frozen=True)
class Decision:
    desired_replicas: int
    reason: Reason
    inputs: SizingInputs
    state: SizingState
    drain: tuple[str, ...]  # idle workers to mark draining now
    resume: tuple[str, ...]  # draining workers to return to service
    cluster_full: bool  # a serving pod cannot be scheduled: the cluster fits no more workers

    def message(self) -> str:
        i = self.inputs
        per_worker = "" if i.jobs_per_worker is None else _per_worker(i.jobs_per_worker)
        bounds = "" if i.min_replicas is None else f" [min {i.min_replicas}, max {i.max_replicas}]"
        parts = [
            f"desired {self.desired_replicas} (was {i.previous}, {self.reason.value})",
            f"{i.queued} queued + {i.running} running jobs need {i.demand:.2f} workers{per_worker}",
        ]
        if i.unfittable:
            parts.append(f"{i.unfittable} jobs fit no GPU of the pool")
        if i.cold_models:
            parts.append(f"{i.cold_models} queued models to load")
        if i.warm_floor:
            parts.append(f"minWarm copies need {i.warm_floor} workers")
        if i.min_replicas is not None:
            parts.append(f"recommended {i.recommended}{bounds}")
        if i.idle_seconds is not None:
            parts.append(f"idle {i.idle_seconds:.0f}s")
        parts.append(
            f"workers: {i.ready} ready, {i.starting} starting, {i.unschedulable} unschedulable, "
            f"{i.draining} draining"
        )
        if self.drain:
            parts.append("draining " + ", ".join(self.drain))
        if self.resume:
            parts.append("back in service " + ", ".join(self.resume))
        return "; ".join(parts)


def _per_worker(jobs_per_worker: tuple[int, int]) -> str:
    low, high = jobs_per_worker
    return f" at {low} jobs per worker" if low == high else f" at {low}-{high} jobs per worker"


def demand(jobs: Iterable[Job], shape: WorkerShape, target_jobs_per_worker: int) -> tuple[Fraction, int]:
    """Workers' worth of `jobs`, exactly, and how many of them fit no GPU of the pool.

    Adding a job never lowers the result: every job adds a share >= 0.
    """
    per_worker: Counter[int] = Counter()
    unfittable = 0
    for job in jobs:
        concurrency = shape.concurrency(job.vram)
        if concurrency == 0:
            unfittable += 1
        else:
            per_worker[min(target_jobs_per_worker, concurrency)] += 1
    return sum((Fraction(n, c) for c, n in per_worker.items()), Fraction(0)), unfittable


def _stabilize(
    previous: int, recommended: int, history: tuple[tuple[float, int], ...], policy: Policy, now: float
) -> int:
    """The HPA's rule: up to the lowest recommendation in the up window, down to the highest in
    the down window; both windows include the current recommendation."""
    up = min([recommended] + [r for t, r in history if t > now - policy.scale_up_stabilization_seconds])
    down = max([recommended] + [r for t, r in history if t > now - policy.scale_down_stabilization_seconds])
    return min(max(previous, up), down)


def decide(
    policy: Policy | None,
    *,
    replicas: int,
    shape: WorkerShape,
    queued: Iterable[Job],
    running: Iterable[Job],
    workers: Iterable[WorkerView],
    state: SizingState,
    now: float,
    models: Iterable[Model] = (),
) -> Decision:
    """The pool's size and the workers to drain or resume.

    ``policy`` None means a fixed size: ``replicas`` (spec.replicas, which HPA or KEDA may
    drive through the scale subresource) is the size; removal still drains idle workers only.
    """
    _require(replicas >= 0, "replicas", "must be >= 0", replicas)
    _require(math.isfinite(now), "now", "must be a finite time in seconds", now)
    queued, running, workers, models = tuple(queued), tuple(running), tuple(workers), tuple(models)
    serving = [w for w in workers if not w.draining]
    previous = state.desired_replicas if state.desired_replicas is not None else len(serving)

    # Without a policy there is no target: what a worker can run decides.
    target = (
        policy.target_jobs_per_worker
        if policy is not None
        else shape.gpus_per_worker * shape.max_jobs_per_gpu
    )
    needed, unfittable = demand((*queued, *running), shape, target)
    busy = needed > 0
    # Each cold model's load holds a slot as one more of its jobs would.
    warm = {m for w in serving if w.ready for m in w.loaded_models}
    served = {m.name for m in models}
    loads = {job.model: job for job in queued if job.model in served and job.model not in warm}
    needed += demand(loads.values(), shape, target)[0]
    floor = warm_floor(models, shape)
    idle_since = None if busy else (state.idle_since if state.idle_since is not None else now)
    idle_seconds = None if idle_since is None else now - idle_since
    wanted_at = dict(state.model_last_wanted)
    for job in (*queued, *running):
        wanted_at[job.model] = now
    model_last_wanted = tuple(
        sorted(wanted_at.items(), key=lambda item: (-item[1], item[0]))[:MAX_REMEMBERED_MODELS]
    )

    if policy is None:
        desired, recommended, reason = replicas, replicas, Reason.FIXED
        history: tuple[tuple[float, int], ...] = ()
    else:
        unbounded = math.ceil(needed)
        if not busy and idle_seconds is not None and idle_seconds < policy.idle_seconds_before_zero:
            unbounded = min(previous, 1)  # a warm worker rides out a short lull
        unbounded = max(unbounded, floor)
        recommended = min(max(unbounded, policy.min_replicas), policy.max_replicas)
        if recommended == 0:
            desired = 0  # only a pool idle for idleSecondsBeforeZero gets here: that was the stabilization
        else:
            desired = _stabilize(previous, recommended, state.recommendations, policy, now)
            # Bounds win over history made under an older policy.
            desired = min(max(desired, policy.min_replicas), policy.max_replicas)
        window = max(policy.scale_up_stabilization_seconds, policy.scale_down_stabilization_seconds)
        history = (*((t, r) for t, r in state.recommendations if t > now - window), (now, recommended))
        reason = _reason(previous, desired, unbounded, policy)

    drain, resume = _removals(workers, desired, queued, wanted_at, models)
    inputs = SizingInputs(
        queued=len(queued),
        running=len(running),
        unfittable=unfittable,
        demand=float(needed),
        jobs_per_worker=_jobs_per_worker((*queued, *running), shape, target),
        recommended=recommended,
        previous=previous,
        min_replicas=None if policy is None else policy.min_replicas,
        max_replicas=None if policy is None else policy.max_replicas,
        idle_seconds=idle_seconds,
        ready=sum(1 for w in serving if w.ready),
        starting=sum(1 for w in serving if w.schedulable and not w.ready),
        unschedulable=sum(1 for w in serving if not w.schedulable),
        draining=len(workers) - len(serving),
        cold_models=len(loads),
        warm_floor=floor,
    )
    return Decision(
        desired_replicas=desired,
        reason=reason,
        inputs=inputs,
        state=SizingState(
            desired_replicas=desired,
            recommendations=history,
            idle_since=idle_since,
            model_last_wanted=model_last_wanted,
        ),
        drain=drain,
        resume=resume,
        cluster_full=inputs.unschedulable > 0,
    )


def _reason(previous: int, desired: int, unbounded: int, policy: Policy) -> Reason:
    if desired > previous:
        return Reason.SCALE_FROM_ZERO if previous == 0 else Reason.SCALE_UP
    if desired < previous:
        return Reason.SCALE_TO_ZERO if desired == 0 else Reason.SCALE_DOWN
    if unbounded > policy.max_replicas and desired == policy.max_replicas:
        return Reason.AT_MAX
    if unbounded < policy.min_replicas and desired == policy.min_replicas:
        return Reason.AT_MIN
    return Reason.HOLD


def _jobs_per_worker(jobs: tuple[Job, ...], shape: WorkerShape, target: int) -> tuple[int, int] | None:
    limits = {min(target, c) for c in (shape.concurrency(j.vram) for j in jobs) if c > 0}
    return (min(limits), max(limits)) if limits else None


def _removals(
    workers: tuple[WorkerView, ...],
    desired: int,
    queued: tuple[Job, ...],
    wanted_at: dict[str, float],
    models: tuple[Model, ...] = (),
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(idle workers to drain, draining workers to resume) so that `desired` workers serve."""
    queued_for = Counter(job.model for job in queued)
    copies = Counter(m for w in workers if not w.draining and w.ready for m in w.loaded_models)
    last_copies = {m.name for m in models if 0 < copies[m.name] <= m.min_warm}

    def keep_value(w: WorkerView) -> tuple[int, int, bool, int, float, int, float, str]:
        # Ascending: the first is the cheapest to lose.
        return (
            w.schedulable,
            w.ready,
            bool(w.loaded_models & last_copies),
            sum(queued_for[m] for m in w.loaded_models),
            max((wanted_at.get(m, -math.inf) for m in w.loaded_models), default=-math.inf),
            len(w.loaded_models),
            -(w.started_at if w.started_at is not None else math.inf),
            w.name,
        )

    serving = [w for w in workers if not w.draining]
    if len(serving) > desired:
        idle = sorted((w for w in serving if w.busy_jobs == 0), key=keep_value)
        return tuple(w.name for w in idle[: len(serving) - desired]), ()
    draining = sorted((w for w in workers if w.draining and w.schedulable), key=keep_value, reverse=True)
    return (), tuple(w.name for w in draining[: desired - len(serving)])
