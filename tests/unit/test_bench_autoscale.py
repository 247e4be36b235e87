"""The autoscaling benchmark's simulator and policies, on small hand-made traces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gpufleet.core.dispatch
import gpufleet_worker.admission
from bench.autoscale import sim as simulation
from bench.autoscale.policies import Gpufleet, KedaHpa, Oracle
from bench.autoscale.sim import Pool, Sim, Timing
from bench.autoscale.trace import TRACES, GiB, Trace, TraceJob

# Fixed delays, so the figures below are exact: pods start in 10 s, loads take 20 s.
FIXED = Timing(pod_start_s=(10.0, 10.0), load_median_s=20.0, load_p90_s=20.0)


MODEL_GIB = 2  # every hand-made job's model; the rest of its GiB is its working VRAM


def trace_of(*jobs: tuple[float, str, int, float], horizon: float = 600.0) -> Trace:
    """Jobs as (arrival, model, GiB in all, work)."""
    return Trace(
        "hand",
        horizon,
        tuple(
            TraceJob(i, at, model, (gib - MODEL_GIB) * GiB, work, MODEL_GIB * GiB)
            for i, (at, model, gib, work) in enumerate(jobs)
        ),
    )


def test_a_job_on_an_empty_pool_waits_for_the_pod_then_its_model() -> None:
    trace = trace_of((2.0, "a", 6, 10.0))
    pool = Pool()
    result = Sim(trace, pool, FIXED, seed=0, tail_s=600).run("gpufleet", Gpufleet(pool).loops())
    # Seen at the 5 s reconcile, pod ready at 15 s, model loaded at 35 s.
    assert result.waits.tolist() == [13.0]
    assert result.start_delays.tolist() == [33.0]
    assert result.cold_starts == 1
    assert result.unfinished == 0
    # The worker ran from 5 s until 300 s after the job ended (45 s), rounded up to a reconcile.
    assert result.gpu_s == pytest.approx(345.0 - 5.0, abs=5.0)
    assert result.idle_gpu_s == pytest.approx(result.gpu_s - 30.0, abs=1e-6)


def test_jobs_sharing_a_gpu_run_slower_together() -> None:
    pool = Pool(max_replicas=1)
    trace = trace_of((0.0, "a", 6, 13.0), (0.0, "a", 6, 13.0))
    sim = Sim(trace, pool, FIXED, seed=0, tail_s=600)
    sim.run("gpufleet", Gpufleet(pool).loops())
    # Both start at 30 s (pod 10 s, load 20 s) and share: 13 s of work at 1.3/2 per job.
    assert [j.finish for j in sim.jobs] == pytest.approx([50.0, 50.0])


def test_keda_kills_busy_pods_on_scale_down_and_gpufleet_does_not() -> None:
    # A crowd, then one long job: the HPA later shrinks to one pod and may pick the busy one.
    jobs = [(float(i), f"m{i % 3}", 6, 5.0) for i in range(40)] + [(20.0, "long", 6, 2000.0)]
    trace = trace_of(*jobs, horizon=100.0)
    pool = Pool(max_replicas=8)
    results = {
        p.name: Sim(trace, pool, FIXED, seed=0, tail_s=3000).run(p.name, p.loops())
        for p in (Gpufleet(pool), KedaHpa(pool))
    }
    assert results["gpufleet"].interrupted == 0
    assert results["KEDA+HPA"].interrupted > 0
    assert all(r.unfinished == 0 for r in results.values())


def test_the_oracle_is_ready_before_its_jobs() -> None:
    trace = trace_of((300.0, "a", 6, 10.0), (900.0, "b", 20, 10.0), horizon=1000.0)
    pool = Pool()
    result = Sim(trace, pool, FIXED, seed=0, tail_s=600).run("oracle", Oracle(pool, trace, FIXED).loops())
    assert result.start_delays.tolist() == [0.0, 0.0]


def test_same_seed_same_figures() -> None:
    trace = TRACES["sessions"](seed=5, hours=1.0)
    pool = Pool()
    a, b = (Sim(trace, pool, Timing(), seed=5).run("g", Gpufleet(pool).loops()) for _ in range(2))
    assert np.array_equal(a.waits, b.waits) and a.gpu_s == b.gpu_s and a.cold_starts == b.cold_starts


@pytest.mark.parametrize("name", sorted(TRACES))
def test_traces_are_seeded_and_ordered(name: str) -> None:
    one, two = TRACES[name](seed=3, hours=2.0), TRACES[name](seed=3, hours=2.0)
    assert one == two
    arrivals = [j.arrival for j in one.jobs]
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0 and arrivals[-1] < one.horizon
    assert one != TRACES[name](seed=4, hours=2.0)


def test_load_times_have_the_stated_median_and_p90() -> None:
    timing = Timing()
    rng = np.random.default_rng(0)
    draws = rng.lognormal(np.log(timing.load_median_s), timing.load_sigma, 200_000)
    assert np.percentile(draws, 50) == pytest.approx(22.7, rel=0.01)
    assert np.percentile(draws, 90) == pytest.approx(42.0, rel=0.01)


def test_pool_limits_bind_the_simulated_fleet() -> None:
    trace = trace_of(*[(0.0, "a", 6, 30.0) for _ in range(30)])
    pool = dataclasses.replace(Pool(), max_replicas=3)
    result = Sim(trace, pool, FIXED, seed=0, tail_s=600).run("gpufleet", Gpufleet(pool).loops())
    assert result.peak_workers == 3
    assert result.unfinished == 0


def test_the_warm_hit_rate_counts_placements_on_a_worker_holding_the_model() -> None:
    # Two jobs of one model, the second after the first ended: the second finds it loaded.
    trace = trace_of((2.0, "a", 6, 10.0), (60.0, "a", 6, 10.0))
    pool = Pool()
    result = Sim(trace, pool, FIXED, seed=0, tail_s=600).run("gpufleet", Gpufleet(pool).loops())
    assert result.cold_starts == 1
    assert result.warm_hit_rate == pytest.approx(0.5)


def test_the_simulator_uses_the_workers_admission_and_the_operators_dispatch() -> None:
    assert simulation.choose_gpu is gpufleet_worker.admission.choose_gpu
    assert simulation.dispatch is gpufleet.core.dispatch


def test_the_cache_stays_within_the_gpu_and_never_evicts_a_model_a_job_needs() -> None:
    # A busy hour on few workers: models come and go on every GPU.
    trace = TRACES["bursty"](seed=2, hours=1.0)
    pool = Pool(max_replicas=3)
    sim = Sim(trace, pool, Timing(), seed=2, tail_s=1800)
    result = sim.run("gpufleet", Gpufleet(pool).loops())
    records = sim.cache_log
    evictions = [r for r in records if r.kind == "evict"]
    assert result.unfinished == 0
    assert len(evictions) == result.evictions > 20
    assert all(r.models_bytes + r.jobs_bytes <= r.total_bytes for r in records)
    assert all(r.in_use == 0 and r.model not in r.needed for r in evictions)
    # Several models share a GPU: more than the two a count-based cache would keep.
    resident: dict[str, set[str]] = {}
    most = 0
    for r in records:
        held = resident.setdefault(r.worker, set())
        if r.kind == "load":
            held.add(r.model)
        elif r.kind == "evict":
            held.discard(r.model)
        most = max(most, len(held))
    assert most > 2


def test_a_load_evicts_the_least_recently_used_idle_model() -> None:
    # One worker whose 10 GiB hold three 2 GiB models beside a 4 GiB job: a, b, c, a, d.
    pool = Pool(gpu_vram=10 * GiB, max_replicas=1, max_jobs_per_gpu=1)
    trace = trace_of(*[(100.0 * i, m, 6, 5.0) for i, m in enumerate("abcad")], horizon=500.0)
    sim = Sim(trace, pool, FIXED, seed=0, tail_s=600)
    result = sim.run("gpufleet", Gpufleet(pool).loops())
    changes = [(r.kind, r.model) for r in sim.cache_log if r.kind in ("load", "evict")]
    # a ran again at 300 s, so b is the least recently used when d needs room.
    assert changes == [("load", "a"), ("load", "b"), ("load", "c"), ("evict", "b"), ("load", "d")]
    assert (result.cold_starts, result.evictions, result.warm_hit_rate) == (4, 1, pytest.approx(0.2))
    assert result.unfinished == 0
