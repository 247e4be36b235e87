"""The three ways of sizing the pool that the benchmark compares.

- `Gpufleet`: the operator's decision function, `gpufleet.core.sizing.decide`, called every
  `interval_s` with what the operator observes (queued and running jobs, its worker pods),
  and acted on as the operator does: drain and resume the workers it names, create pods up
  to the desired size.
- `KedaHpa`: KEDA's defaults in front of a Deployment. KEDA polls the queue every 30 s,
  activates the Deployment from 0 to 1 and returns it to 0 after a 300 s cooldown without
  activity. Between 1 and max, the HPA syncs every 15 s with ``ceil(metric / target)``
  (AverageValue target, 10% tolerance), scale-up at most max(+100%, +4 pods) per sync and a
  300 s scale-down stabilization window. The metric is queued plus running jobs (as KEDA's
  queue scalers count in-flight messages by default) and the target the pool's
  targetJobsPerWorker. Scale-down deletes pods the way a ReplicaSet picks them (not ready
  first, then the most recently ready), busy or not.
- `Oracle`: knows every future arrival and its duration. At every second it wants the most
  workers the jobs will need at any moment of the next `lead_s` seconds (a pod start plus a
  slow model load), if every job ran the moment it arrived; it drains idle workers whose
  models the coming jobs want least, and loads the models coming jobs want on idle workers
ahead of them (which the real worker cannot be told to do).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter

import numpy as np

from bench.autoscale.sim import Loop, Pool, Sim, Timing, Worker
from bench.autoscale.trace import Trace
from gpufleet.core.sizing import Job, Model, Policy, SizingState, WorkerView, decide, worker_shape


class Gpufleet:
    def __init__(self, pool: Pool, interval_s: float = 5.0, name: str = "gpufleet") -> None:
        self.name = name
        self.pool = pool
        self.interval_s = interval_s
        self.policy = Policy(
            min_replicas=pool.min_replicas,
            max_replicas=pool.max_replicas,
            target_jobs_per_worker=pool.target_jobs_per_worker,
            scale_up_stabilization_seconds=pool.scale_up_stabilization_s,
            scale_down_stabilization_seconds=pool.scale_down_stabilization_s,
            idle_seconds_before_zero=pool.idle_before_zero_s,
        )
        self.state = SizingState()

    def loops(self) -> list[Loop]:
        return [Loop(self.interval_s, 0.0, self.reconcile)]

    def reconcile(self, sim: Sim) -> None:
        pods = [w for w in sim.workers.values() if not w.terminating]
        views = [
            WorkerView(
                w.name,
                ready=w.ready,
                draining=w.draining,
                busy_jobs=len(w.jobs),
                gpu_vram_total=(self.pool.gpu_vram,) if w.ready else (),
                loaded_models=w.models,
                started_at=w.created_at,
            )
            for w in pods
        ]
        decision = decide(
            self.policy,
            replicas=0,
            shape=worker_shape(self.pool.gpu_vram, 1, self.pool.max_jobs_per_gpu, views),
            # As the operator counts a job: its model's weights and its working memory.
            queued=[Job(str(j.spec.id), j.spec.total_vram, j.spec.model) for j in sim.queue],
            running=[Job(str(j.spec.id), j.spec.total_vram, j.spec.model) for w in pods for j in w.jobs],
            workers=views,
            state=self.state,
            now=sim.now,
            models=[Model(name, vram) for name, vram in sim.model_vram.items()],
        )
        self.state = decision.state
        for name in decision.drain:
            sim.drain(sim.workers[name])
        for name in decision.resume:
            sim.resume(sim.workers[name])
        serving = sum(1 for w in sim.workers.values() if w.serving)
        for _ in range(decision.desired_replicas - serving):
            sim.create_worker()


class KedaHpa:
    name = "KEDA+HPA"

    def __init__(
        self,
        pool: Pool,
        polling_s: float = 30.0,
        hpa_sync_s: float = 15.0,
        cooldown_s: float = 300.0,
        scale_down_window_s: float = 300.0,
        tolerance: float = 0.1,
    ) -> None:
        self.pool = pool
        self.polling_s, self.hpa_sync_s = polling_s, hpa_sync_s
        self.cooldown_s, self.scale_down_window_s, self.tolerance = cooldown_s, scale_down_window_s, tolerance
        self.replicas = 0  # the Deployment's spec.replicas
        self.last_active: float | None = None
        self.recommendations: list[tuple[float, int]] = []

    def loops(self) -> list[Loop]:
        return [Loop(self.polling_s, 0.0, self.keda_poll), Loop(self.hpa_sync_s, 0.0, self.hpa_sync)]

    def keda_poll(self, sim: Sim) -> None:
        if sim.queued_and_running() > 0:
            self.last_active = sim.now
            if self.replicas == 0:
                self._scale(sim, 1)
        elif (
            self.replicas > 0
            and self.last_active is not None
            and sim.now - self.last_active >= self.cooldown_s
        ):
            self._scale(sim, 0)

    def hpa_sync(self, sim: Sim) -> None:
        if self.replicas == 0:
            return  # the HPA does nothing while its target is at zero; KEDA activates it
        metric = sim.queued_and_running()
        target = self.pool.target_jobs_per_worker
        pods = sum(1 for w in sim.workers.values() if not w.terminating)
        ratio = metric / (target * pods) if pods else math.inf
        wanted = pods if abs(ratio - 1.0) <= self.tolerance else math.ceil(metric / target)
        wanted = min(max(wanted, 1), self.pool.max_replicas)
        now = sim.now
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - self.scale_down_window_s]
        self.recommendations.append((now, wanted))
        highest = max(r for _, r in self.recommendations)
        current = self.replicas
        desired = min(max(current, wanted), highest)
        desired = min(desired, max(2 * current, current + 4))  # default scale-up policies
        self._scale(sim, desired)

    def _scale(self, sim: Sim, replicas: int) -> None:
        """The Deployment controller: create pods, or delete the ones a ReplicaSet picks first."""
        self.replicas = replicas
        pods = [w for w in sim.workers.values() if not w.terminating]
        for _ in range(replicas - len(pods)):
            sim.create_worker()
        if len(pods) > replicas:
            pods.sort(key=lambda w: (w.ready, -(w.ready_at or 0.0), -w.created_at))
            for w in pods[: len(pods) - replicas]:
                sim.terminate(w)


class Oracle:
    name = "oracle"

    def __init__(self, pool: Pool, trace: Trace, timing: Timing, tail_s: float = 3600.0) -> None:
        self.pool = pool
        self.lead_s = math.ceil(timing.pod_start_s[1] + timing.load_p90_s)
        self.arrivals = [j.arrival for j in trace.jobs]
        self.models = [j.model for j in trace.jobs]
        # Workers' worth of jobs in service at each second if every job started on arrival,
        # each job on a GPU packed as full as its VRAM allows (so running slower, shared).
        seconds = int(trace.horizon + tail_s) + self.lead_s + 2
        load = np.zeros(seconds + 1)
        for job in trace.jobs:
            c = pool.concurrency(job.total_vram)
            service = job.work * c / pool.throughput(c)
            start = int(job.arrival)
            stop = min(seconds, math.ceil(job.arrival + service))
            load[start] += 1.0 / c
            load[stop] -= 1.0 / c
        needed = np.ceil(np.cumsum(load)[:seconds] - 1e-9).astype(int)
        window = np.lib.stride_tricks.sliding_window_view(needed, self.lead_s + 1).max(axis=1)
        self.wanted = np.minimum(window, pool.max_replicas)

    def loops(self) -> list[Loop]:
        return [Loop(1.0, 0.0, self.tick)]

    def tick(self, sim: Sim) -> None:
        desired = max(int(self.wanted[min(int(sim.now), len(self.wanted) - 1)]), self.pool.min_replicas)
        serving = [w for w in sim.workers.values() if w.serving]
        if desired > len(serving):
            draining = [w for w in sim.workers.values() if w.draining]
            for w in draining[: desired - len(serving)]:
                sim.resume(w)
            for _ in range(desired - len(serving) - min(len(draining), desired - len(serving))):
                sim.create_worker()
        coming = self._coming(sim.now)
        if desired < len(serving):

            def keep_value(w: Worker) -> tuple[bool, int, float]:
                return (w.ready, sum(coming[m] for m in w.models), -w.created_at)

            idle = sorted((w for w in serving if not w.jobs), key=keep_value)
            for w in idle[: len(serving) - desired]:
                sim.drain(w)
        self._load_ahead(sim, coming)

    def _load_ahead(self, sim: Sim, coming: Counter[str]) -> None:
        """Load on idle workers the models coming jobs want that no worker holds or loads."""
        accepting = [w for w in sim.workers.values() if w.accepting]
        held = {m for w in accepting for m in (*w.models, *w.loading)}
        missing = [m for m, _ in coming.most_common() if m not in held]
        idle = [w for w in accepting if not w.jobs and not w.loading]
        for w, model in zip(idle, missing, strict=False):
            sim.load_ahead(w, model)

    def _coming(self, now: float) -> Counter[str]:
        lo = bisect.bisect_left(self.arrivals, now)
        hi = bisect.bisect_right(self.arrivals, now + self.lead_s)
        return Counter(self.models[lo:hi])
