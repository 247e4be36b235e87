"""The many-model benchmark (bench/models): its trace, its replay and a tiny run of it."""

from __future__ import annotations

import numpy as np
import pytest

import gpufleet.core.dispatch
import gpufleet_worker.modelcache
from bench.models import sim as simulation
from bench.models.__main__ import main
from bench.models.sim import Fleet, Gpufleet, LeastLoaded, Preload, Sim
from bench.models.trace import (
    JOB_VRAM,
    LOAD_MEDIAN_S,
    LOAD_P90_S,
    GiB,
    Model,
    Trace,
    TraceJob,
    catalog,
    generate,
)


def test_the_replay_uses_the_workers_cache_rule_and_the_operators_round() -> None:
    assert simulation.choose_evictions is gpufleet_worker.modelcache.choose_evictions
    assert simulation.dispatch is gpufleet.core.dispatch


def test_the_trace_has_skewed_popularity_and_the_published_load_times() -> None:
    models = catalog(np.random.default_rng(0), 4000)
    loads = np.array([m.load_s for m in models])
    assert np.median(loads) == pytest.approx(LOAD_MEDIAN_S, rel=0.05)
    assert np.percentile(loads, 90) == pytest.approx(LOAD_P90_S, rel=0.05)
    trace = generate(1, 1800, 0.5)
    counts = np.sort(np.unique([j.model for j in trace.jobs], return_counts=True)[1])[::-1]
    assert len(trace.models) >= 80
    assert counts[:10].sum() > 0.4 * len(trace.jobs)  # Zipf-like: a few models take most jobs
    assert all(a.arrival <= b.arrival for a, b in zip(trace.jobs, trace.jobs[1:], strict=False))


def hand_trace(*jobs: tuple[float, str, float]) -> Trace:
    models = (Model("a", 8 * GiB, 20.0, 0.5), Model("b", 8 * GiB, 30.0, 0.5))
    return Trace(models, tuple(TraceJob(i, at, m, work) for i, (at, m, work) in enumerate(jobs)), 600.0)


def test_one_gpu_loads_evicts_and_hits_exactly() -> None:
    # 16 GiB: one 8 GiB model and a 3 GiB job fit, two models do not. a, a, b, a.
    trace = hand_trace((0.0, "a", 5.0), (100.0, "a", 5.0), (200.0, "b", 5.0), (300.0, "a", 5.0))
    result = Sim(trace, Fleet(1, 16 * GiB), seed=0).run("least-loaded", LeastLoaded())
    assert (result.loads, result.evictions, result.warm_hits) == (3, 2, 1)
    assert result.waits[1] == 0.0  # warm
    assert 16.4 + 15 < result.waits[0] < 16.4 + 25  # its download (8 GiB at 500 MiB/s), then its load (20 s)
    assert result.unfinished == 0


def test_gpufleet_waits_for_the_warm_copy_where_least_loaded_loads_another() -> None:
    # Two GPUs; three jobs for a at once: one loads it, the others wait for that warm copy.
    trace = hand_trace((0.0, "a", 5.0), (0.0, "a", 5.0), (0.0, "a", 5.0))
    ours = Sim(trace, Fleet(2, 16 * GiB), seed=0).run("gpufleet", Gpufleet())
    theirs = Sim(trace, Fleet(2, 16 * GiB), seed=0).run("least-loaded", LeastLoaded())
    assert (ours.loads, theirs.loads) == (1, 2)
    assert ours.warm_hits == 2


def test_preload_pins_the_most_popular_models_that_fit() -> None:
    trace = hand_trace((0.0, "b", 5.0))
    sim = Sim(trace, Fleet(2, 24 * GiB), seed=0)
    Preload(sim)  # 24 - 8 (largest) - 3 (a job) = 13 GiB: one 8 GiB model
    assert all(len(g.copies) == 1 and all(c.pinned for c in g.copies.values()) for g in sim.gpus)
    assert 3 * GiB == JOB_VRAM


def test_a_tiny_run_prints_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gpus", "4", "--hours", "0.03", "--rate", "0.3", "--models", "12"]) == 0
    out = capsys.readouterr().out
    for name in ("gpufleet", "least-loaded", "preload", "warm-hit", "p95 wait+load"):
        assert name in out
