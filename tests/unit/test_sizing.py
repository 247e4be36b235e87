"""Pool sizing (gpufleet.core.sizing): bounds, stabilization, zero, removal, failure paths."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.core.sizing import (
    Decision,
    Job,
    Model,
    Policy,
    Reason,
    SizingState,
    WorkerShape,
    WorkerView,
    decide,
    demand,
    warm_floor,
    worker_shape,
)

GiB = 1024**3
SHAPE = WorkerShape(gpu_vram=24 * GiB, gpus_per_worker=1, max_jobs_per_gpu=4)


def jobs(n: int, vram_gib: int = 10, model: str = "sdxl", prefix: str = "q") -> tuple[Job, ...]:
    return tuple(Job(f"{prefix}{i}", vram_gib * GiB, model) for i in range(n))


def idle_workers(n: int, prefix: str = "w") -> tuple[WorkerView, ...]:
    return tuple(WorkerView(f"{prefix}{i}", ready=True, gpu_vram_total=(24 * GiB,)) for i in range(n))


def run(
    policy: Policy | None,
    *,
    queued: tuple[Job, ...] = (),
    running: tuple[Job, ...] = (),
    workers: tuple[WorkerView, ...] = (),
    state: SizingState | None = None,
    now: float = 1000.0,
    replicas: int = 1,
    shape: WorkerShape = SHAPE,
) -> Decision:
    return decide(
        policy,
        replicas=replicas,
        shape=shape,
        queued=queued,
        running=running,
        workers=workers,
        state=state if state is not None else SizingState(),
        now=now,
    )


def fast(**overrides: float) -> Policy:
    """A policy without stabilization, so one call shows the recommendation."""
    values: dict = dict(
        min_replicas=0,
        max_replicas=8,
        target_jobs_per_worker=4,
        scale_up_stabilization_seconds=0,
        scale_down_stabilization_seconds=0,
        idle_seconds_before_zero=300,
    )
    values.update(overrides)
    return Policy(**values)


# --- sizing from the jobs and what one worker can run ----------------------------------------


def test_concurrency_from_vram_caps_the_target() -> None:
    # 24 GiB GPU, 10 GiB jobs: two at once, although the target says four.
    assert SHAPE.concurrency(10 * GiB) == 2
    assert run(fast(), queued=jobs(8)).desired_replicas == 4
    assert run(fast(), queued=jobs(6), running=jobs(2, prefix="r")).desired_replicas == 4


def test_target_caps_the_concurrency() -> None:
    # 4 GiB jobs: four fit by maxJobsPerGPU; a target of 1 still wants one worker per job.
    assert run(fast(target_jobs_per_worker=1), queued=jobs(5, vram_gib=4)).desired_replicas == 5
    assert run(fast(target_jobs_per_worker=4), queued=jobs(5, vram_gib=4)).desired_replicas == 2


def test_gpus_per_worker_and_max_jobs_per_gpu_multiply() -> None:
    shape = WorkerShape(gpu_vram=24 * GiB, gpus_per_worker=2, max_jobs_per_gpu=3)
    assert shape.concurrency(4 * GiB) == 6  # 3 per GPU by the limit
    assert shape.concurrency(10 * GiB) == 4  # 2 per GPU by VRAM
    assert shape.concurrency(30 * GiB) == 0


def test_mixed_jobs_add_their_shares_exactly() -> None:
    mixed = (*jobs(3, vram_gib=10), *jobs(2, vram_gib=20, prefix="big"))  # 3 x 1/2 + 2 x 1
    needed, unfittable = demand(mixed, SHAPE, target_jobs_per_worker=4)
    assert (needed, unfittable) == (3.5, 0)
    decision = run(fast(), queued=mixed)
    assert decision.desired_replicas == 4
    assert decision.inputs.jobs_per_worker == (1, 2)


def test_jobs_too_big_for_a_gpu_do_not_scale_the_pool() -> None:
    decision = run(fast(), queued=(*jobs(2), *jobs(3, vram_gib=40, prefix="huge")))
    assert decision.desired_replicas == 1
    assert decision.inputs.unfittable == 3
    assert "3 jobs fit no GPU of the pool" in decision.message()


def test_worker_shape_uses_the_smallest_gpu_seen_on_ready_workers() -> None:
    workers = (
        WorkerView("a", ready=True, gpu_vram_total=(80 * GiB,)),
        WorkerView("b", ready=True, gpu_vram_total=(40 * GiB,)),
        WorkerView("c", ready=False, gpu_vram_total=(16 * GiB,)),
    )
    assert worker_shape(24 * GiB, 1, 2, workers).gpu_vram == 40 * GiB
    assert worker_shape(24 * GiB, 1, 2, ()).gpu_vram == 24 * GiB


# --- bounds and reasons ------------------------------------------------------------------------


def test_clamped_to_max_says_at_max() -> None:
    policy = fast(max_replicas=3)
    decision = run(policy, queued=jobs(40), workers=idle_workers(3))
    assert (decision.desired_replicas, decision.reason) == (3, Reason.AT_MAX)
    decision = run(policy, queued=jobs(40), workers=idle_workers(1))
    assert (decision.desired_replicas, decision.reason) == (3, Reason.SCALE_UP)


def test_clamped_to_min_says_at_min() -> None:
    decision = run(fast(min_replicas=2), running=jobs(1), workers=idle_workers(2))
    assert (decision.desired_replicas, decision.reason) == (2, Reason.AT_MIN)


def test_hold_when_the_size_fits() -> None:
    decision = run(fast(), running=jobs(4), workers=idle_workers(2))
    assert (decision.desired_replicas, decision.reason) == (2, Reason.HOLD)


def test_bounds_win_over_history_from_an_older_policy() -> None:
    state = SizingState(desired_replicas=8, recommendations=((990.0, 8),))
    policy = fast(max_replicas=3, scale_down_stabilization_seconds=300)
    assert run(policy, queued=jobs(40), state=state).desired_replicas == 3


def test_fixed_size_follows_replicas_and_drains_idle_workers_only() -> None:
    workers = (
        WorkerView("busy", ready=True, busy_jobs=2),
        WorkerView("idle", ready=True),
        WorkerView("busy2", ready=True, busy_jobs=1),
    )
    decision = run(None, replicas=1, queued=jobs(50), workers=workers)
    assert (decision.desired_replicas, decision.reason) == (1, Reason.FIXED)
    assert decision.drain == ("idle",)  # the busy ones wait until idle
    assert "[min" not in decision.message()
    assert "at 2 jobs per worker" in decision.message()  # no target: VRAM decides


# --- stabilization (the HPA's rule) ------------------------------------------------------------


def series(policy: Policy, demands: list[int], step: float = 10.0, start: int = 0) -> list[int]:
    """Desired sizes over a run of calls, `step` seconds apart, with `d` 10 GiB jobs running each."""
    state = SizingState(desired_replicas=start)
    sizes = []
    for k, d in enumerate(demands):
        decision = run(policy, running=jobs(2 * d), state=state, now=1000.0 + k * step)
        state = decision.state
        sizes.append(decision.desired_replicas)
    return sizes


def test_scale_up_takes_the_lowest_recommendation_in_the_window() -> None:
    policy = fast(scale_up_stabilization_seconds=30)
    # Recommendations 1, 5, 3, 5, 5, 5: the window (30 s, calls 10 s apart) holds three.
    assert series(policy, [1, 5, 3, 5, 5, 5]) == [1, 1, 1, 3, 3, 5]


def test_scale_down_takes_the_highest_recommendation_in_the_window() -> None:
    policy = fast(scale_down_stabilization_seconds=30, min_replicas=1)
    assert series(policy, [6, 2, 4, 1, 1, 1, 1], start=6) == [6, 6, 6, 4, 4, 1, 1]


def test_without_windows_the_size_follows_the_recommendation() -> None:
    assert series(fast(min_replicas=1), [3, 1, 4, 1, 5]) == [3, 1, 4, 1, 5]


@settings(max_examples=150, deadline=None)
@given(
    demands=st.lists(st.integers(0, 12), min_size=1, max_size=25),
    up=st.sampled_from([0, 15, 60]),
    down=st.sampled_from([0, 30, 120]),
    step=st.sampled_from([2.0, 5.0, 15.0]),
)
def test_moves_only_as_far_as_every_recommendation_in_the_window_agrees(
    demands: list[int], up: int, down: int, step: float
) -> None:
    policy = fast(
        min_replicas=1,
        max_replicas=8,
        scale_up_stabilization_seconds=up,
        scale_down_stabilization_seconds=down,
    )
    state = SizingState(desired_replicas=1)
    seen: list[tuple[float, int]] = []
    for k, d in enumerate(demands):
        now = 1000.0 + k * step
        decision = run(policy, running=jobs(2 * d), state=state, now=now)
        seen.append((now, decision.inputs.recommended))
        previous, desired = state.desired_replicas or 0, decision.desired_replicas
        # Each window holds the recommendations made within it, the current one included.
        lowest_up = min(r for t, r in seen if t > now - up or t == now)
        highest_down = max(r for t, r in seen if t > now - down or t == now)
        if desired > previous:
            assert desired == lowest_up
        elif desired < previous:
            assert desired == highest_down
        else:
            assert lowest_up <= previous <= highest_down
        state = decision.state


# --- scale to zero and back --------------------------------------------------------------------


def test_scales_to_zero_only_after_the_idle_time() -> None:
    policy = fast(idle_seconds_before_zero=300, scale_down_stabilization_seconds=120)
    state = run(policy, running=jobs(6), workers=idle_workers(3), now=0.0).state
    assert state.desired_replicas == 3
    sizes = {}
    for now in (10.0, 100.0, 200.0, 309.0, 310.0):
        decision = run(policy, workers=idle_workers(3), state=state, now=now)
        state = decision.state
        sizes[now] = (decision.desired_replicas, decision.reason)
    # Idle since t=10: one warm worker once the down window passed, zero after 300 s idle.
    assert sizes[10.0] == (3, Reason.HOLD)
    assert sizes[200.0] == (1, Reason.SCALE_DOWN)
    assert sizes[309.0] == (1, Reason.HOLD)
    assert sizes[310.0] == (0, Reason.SCALE_TO_ZERO)


def test_a_job_restarts_the_idle_clock() -> None:
    policy = fast(idle_seconds_before_zero=100)
    state = run(policy, workers=idle_workers(1), now=0.0).state
    state = run(policy, running=jobs(1), workers=idle_workers(1), state=state, now=90.0).state
    decision = run(policy, workers=idle_workers(1), state=state, now=150.0)
    assert decision.desired_replicas == 1
    assert decision.inputs.idle_seconds == 0.0
    assert run(policy, workers=idle_workers(1), state=decision.state, now=250.0).desired_replicas == 0


def test_min_replicas_above_zero_never_goes_to_zero() -> None:
    policy = fast(min_replicas=1, idle_seconds_before_zero=0)
    decision = run(policy, workers=idle_workers(2), state=SizingState(desired_replicas=2))
    assert (decision.desired_replicas, decision.reason) == (1, Reason.SCALE_DOWN)


def test_scales_from_zero_on_the_first_job() -> None:
    decision = run(fast(), queued=jobs(1), state=SizingState(desired_replicas=0))
    assert (decision.desired_replicas, decision.reason) == (1, Reason.SCALE_FROM_ZERO)


def test_scale_from_zero_respects_the_scale_up_window() -> None:
    policy = fast(scale_up_stabilization_seconds=20)
    state = run(policy, state=SizingState(desired_replicas=0), now=0.0).state
    assert state.desired_replicas == 0
    sizes = []
    for now in (10.0, 19.0, 21.0):
        decision = run(policy, queued=jobs(1), state=state, now=now)
        state = decision.state
        sizes.append(decision.desired_replicas)
    assert sizes == [0, 0, 1]  # the idle recommendation at t=0 leaves the window at t=20


def test_a_lull_does_not_wake_a_pool_at_zero() -> None:
    # Held at zero by the scale-up window, its only job cancelled: no worker for nothing.
    policy = fast(scale_up_stabilization_seconds=60)
    state = SizingState(desired_replicas=0, recommendations=((990.0, 0),))
    state = run(policy, queued=jobs(1), state=state, now=1000.0).state
    decision = run(policy, state=state, now=1010.0)
    assert (decision.desired_replicas, decision.inputs.recommended) == (0, 0)


def test_an_idle_pool_at_zero_stays_at_zero() -> None:
    decision = run(fast(), state=SizingState(desired_replicas=0, idle_since=0.0))
    assert (decision.desired_replicas, decision.reason) == (0, Reason.HOLD)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(st.tuples(st.floats(0.5, 200.0), st.integers(0, 6)), min_size=1, max_size=30),
    idle=st.sampled_from([0, 60, 300]),
    down=st.sampled_from([0, 120]),
)
def test_zero_only_after_idle_seconds_without_jobs(
    events: list[tuple[float, int]], idle: int, down: int
) -> None:
    policy = fast(idle_seconds_before_zero=idle, scale_down_stabilization_seconds=down)
    state, now = SizingState(desired_replicas=1), 0.0
    idle_from: float | None = None  # the first call of the current run of calls without jobs
    for gap, n in events:
        now += gap
        idle_from = None if n else (now if idle_from is None else idle_from)
        decision = run(policy, running=jobs(n), state=state, now=now)
        if n:
            assert decision.desired_replicas >= 1
        if decision.desired_replicas == 0 and (state.desired_replicas or 0) > 0:
            assert idle_from is not None and now - idle_from >= idle
        state = decision.state


# --- monotone in the queue ---------------------------------------------------------------------

policies = st.builds(
    lambda lo, span, target, up, down, idle: Policy(lo, max(1, lo + span), target, up, down, idle),
    st.integers(0, 4),
    st.integers(0, 8),
    st.integers(1, 6),
    st.sampled_from([0, 10, 60]),
    st.sampled_from([0, 30, 300]),
    st.sampled_from([0, 60, 300]),
)
job_lists = st.lists(
    st.builds(
        lambda i, gib, model: Job(f"j{i}", gib * GiB, model),
        st.integers(0, 10**6),
        st.integers(1, 30),
        st.sampled_from(["sd15", "sdxl", "flux"]),
    ),
    max_size=30,
)
histories = st.builds(
    lambda prev, recs, idle_since: SizingState(
        desired_replicas=prev,
        recommendations=tuple((1000.0 - 10 * k, r) for k, r in enumerate(recs)),
        idle_since=idle_since,
    ),
    st.none() | st.integers(0, 12),
    st.lists(st.integers(0, 12), max_size=8),
    st.none() | st.floats(0.0, 1000.0),
)
worker_lists = st.lists(
    st.builds(
        lambda i, ready, draining, busy, models: WorkerView(
            f"w{i}",
            ready=ready,
            draining=draining,
            busy_jobs=busy,
            gpu_vram_total=(24 * GiB,),
            loaded_models=frozenset(models),
            started_at=float(i),
        ),
        st.integers(0, 10**6),
        st.booleans(),
        st.booleans(),
        st.integers(0, 3),
        st.sets(st.sampled_from(["sd15", "sdxl", "flux"]), max_size=2),
    ),
    max_size=10,
    unique_by=lambda w: w.name,
)


@settings(max_examples=300, deadline=None)
@given(policy=policies | st.none(), queue=job_lists, extra=job_lists, running=job_lists, state=histories)
def test_desired_size_never_falls_when_the_queue_grows(
    policy: Policy | None, queue: list[Job], extra: list[Job], running: list[Job], state: SizingState
) -> None:
    def size(q: list[Job]) -> int:
        return run(policy, queued=tuple(q), running=tuple(running), state=state).desired_replicas

    assert size(queue) <= size(queue + extra)


@settings(max_examples=300, deadline=None)
@given(policy=policies, queue=job_lists, running=job_lists, state=histories, workers=worker_lists)
def test_within_bounds_and_never_drains_a_busy_worker(
    policy: Policy, queue: list[Job], running: list[Job], state: SizingState, workers: list[WorkerView]
) -> None:
    decision = run(policy, queued=tuple(queue), running=tuple(running), workers=tuple(workers), state=state)
    assert policy.min_replicas <= decision.desired_replicas <= policy.max_replicas
    by_name = {w.name: w for w in workers}
    assert all(by_name[n].busy_jobs == 0 and not by_name[n].draining for n in decision.drain)
    assert all(by_name[n].draining for n in decision.resume)
    serving = sum(1 for w in workers if not w.draining)
    assert serving - len(decision.drain) + len(decision.resume) >= min(decision.desired_replicas, serving)
    assert decision.state.desired_replicas == decision.desired_replicas
    assert all(
        t > 1000.0 - max(policy.scale_up_stabilization_seconds, policy.scale_down_stabilization_seconds)
        or t == 1000.0
        for t, _ in decision.state.recommendations
    )


# --- which workers go --------------------------------------------------------------------------


def test_drains_idle_workers_whose_models_the_queue_wants_least() -> None:
    workers = (
        WorkerView("busy", ready=True, busy_jobs=1, loaded_models=frozenset({"rare"})),
        WorkerView("holds-popular", ready=True, loaded_models=frozenset({"popular"})),
        WorkerView("holds-rare", ready=True, loaded_models=frozenset({"rare"})),
        WorkerView("holds-nothing-wanted", ready=True, loaded_models=frozenset({"old"})),
    )
    queue = (*jobs(3, vram_gib=10, model="popular"), *jobs(1, vram_gib=10, model="rare", prefix="r"))
    decision = run(fast(max_replicas=2, target_jobs_per_worker=2), queued=queue, workers=workers)
    assert decision.desired_replicas == 2
    assert decision.drain == ("holds-nothing-wanted", "holds-rare")


def test_among_unwanted_models_keeps_the_most_recently_wanted() -> None:
    workers = (
        WorkerView("a", ready=True, loaded_models=frozenset({"yesterday"})),
        WorkerView("b", ready=True, loaded_models=frozenset({"just-now"})),
    )
    state = SizingState(desired_replicas=2, model_last_wanted=(("just-now", 990.0), ("yesterday", 10.0)))
    decision = run(fast(min_replicas=1, idle_seconds_before_zero=0), workers=workers, state=state)
    assert decision.drain == ("a",)


def test_unschedulable_and_starting_pods_go_before_ready_workers() -> None:
    workers = (
        WorkerView("ready", ready=True, loaded_models=frozenset()),
        WorkerView("starting", ready=False),
        WorkerView("pending", ready=False, schedulable=False),
    )
    decision = run(fast(min_replicas=1), running=jobs(1), workers=workers)
    assert decision.drain == ("pending", "starting")


def test_newest_goes_first_when_all_else_is_equal() -> None:
    workers = (WorkerView("old", ready=True, started_at=1.0), WorkerView("new", ready=True, started_at=50.0))
    assert run(fast(min_replicas=1), running=jobs(1), workers=workers).drain == ("new",)


def test_busy_workers_are_never_drained_even_when_the_pool_must_shrink() -> None:
    workers = tuple(WorkerView(f"w{i}", ready=True, busy_jobs=1) for i in range(4))
    decision = run(fast(max_replicas=4), running=jobs(2), workers=workers)
    assert decision.desired_replicas == 1
    assert decision.drain == ()


def test_draining_workers_come_back_before_new_pods() -> None:
    workers = (
        WorkerView("serving", ready=True, busy_jobs=2),
        WorkerView(
            "draining-warm", ready=True, draining=True, busy_jobs=1, loaded_models=frozenset({"sdxl"})
        ),
        WorkerView("draining-cold", ready=True, draining=True, busy_jobs=1),
        WorkerView("draining-pending", ready=False, schedulable=False, draining=True),
    )
    decision = run(fast(), queued=jobs(4), running=jobs(2, prefix="r"), workers=workers)
    assert decision.desired_replicas == 3
    assert decision.resume == ("draining-warm", "draining-cold")
    assert decision.drain == ()
    assert "back in service draining-warm, draining-cold" in decision.message()


# --- capacity the cluster cannot give ----------------------------------------------------------


def test_unschedulable_pods_flag_a_full_cluster_and_are_not_capacity() -> None:
    workers = (
        WorkerView("w0", ready=True, busy_jobs=2, gpu_vram_total=(24 * GiB,)),
        WorkerView("w1", ready=False, schedulable=False),
    )
    decision = run(fast(), queued=jobs(2), running=jobs(2, prefix="r"), workers=workers)
    assert decision.cluster_full
    assert (decision.inputs.ready, decision.inputs.unschedulable) == (1, 1)
    assert "1 unschedulable" in decision.message()
    assert not run(fast(), workers=idle_workers(2)).cluster_full


def test_an_unschedulable_draining_pod_does_not_flag_a_full_cluster() -> None:
    workers = (WorkerView("w1", ready=False, schedulable=False, draining=True),)
    assert not run(fast(), workers=workers).cluster_full


# --- the event message -------------------------------------------------------------------------


def test_message_carries_the_inputs() -> None:
    decision = run(fast(max_replicas=8), queued=jobs(7), running=jobs(1, prefix="r"), workers=idle_workers(1))
    message = decision.message()
    assert message.startswith("desired 4 (was 1, ScaleUp)")
    assert "7 queued + 1 running jobs need 4.00 workers at 2 jobs per worker" in message
    assert "recommended 4 [min 0, max 8]" in message
    assert "workers: 1 ready, 0 starting, 0 unschedulable, 0 draining" in message


# --- failure paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(min_replicas=-1, max_replicas=2), "autoscaling.minReplicas must be >= 0"),
        (dict(min_replicas=0, max_replicas=0), "autoscaling.maxReplicas must be >= 1"),
        (
            dict(min_replicas=5, max_replicas=3),
            "autoscaling.minReplicas must be <= autoscaling.maxReplicas (3)",
        ),
        (dict(min_replicas=0, max_replicas=3, target_jobs_per_worker=0), "autoscaling.targetJobsPerWorker"),
        (
            dict(min_replicas=0, max_replicas=3, scale_up_stabilization_seconds=-1),
            "autoscaling.scaleUpStabilizationSeconds",
        ),
        (
            dict(min_replicas=0, max_replicas=3, scale_down_stabilization_seconds=math.inf),
            "autoscaling.scaleDownStabilizationSeconds",
        ),
        (
            dict(min_replicas=0, max_replicas=3, idle_seconds_before_zero=math.nan),
            "autoscaling.idleSecondsBeforeZero",
        ),
    ],
)
def test_bad_policy_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        Policy(**kwargs)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: WorkerShape(gpu_vram=0), "gpu.minMemory"),
        (lambda: WorkerShape(gpu_vram=GiB, gpus_per_worker=0), "gpu.count"),
        (lambda: WorkerShape(gpu_vram=GiB, max_jobs_per_gpu=0), "gpu.maxJobsPerGPU"),
        (lambda: Job("j", 0, "m"), "job j: vram"),
        (lambda: WorkerView("w", ready=True, busy_jobs=-1), "worker w: busy_jobs"),
        (lambda: WorkerView("w", ready=True, gpu_vram_total=(0,)), "worker w: gpu_vram_total"),
        (lambda: WorkerView("w", ready=True, schedulable=False), "worker w: ready"),
        (lambda: run(None, replicas=-1), "replicas must be >= 0"),
        (lambda: run(fast(), now=math.nan), "now must be a finite time"),
    ],
)
def test_bad_inputs_name_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


# --- models: cold loads and minWarm -----------------------------------------------------------


def model_run(models: tuple[Model, ...], **kwargs: object) -> Decision:
    return decide(
        fast(target_jobs_per_worker=1),
        replicas=0,
        shape=SHAPE,
        queued=kwargs.pop("queued", ()),  # type: ignore[arg-type]
        running=(),
        workers=kwargs.pop("workers", ()),  # type: ignore[arg-type]
        state=SizingState(),
        now=1000.0,
        models=models,
    )


SERVED = (Model("sdxl", 7 * GiB), Model("sd15", 3 * GiB))


@pytest.mark.parametrize(
    ("queued", "holding", "desired", "cold"),
    [
        # Two sdxl jobs, one worker each; sdxl resident nowhere: its load holds one more slot.
        (jobs(2), (), 3, 1),
        (jobs(2), ("sdxl",), 2, 0),  # warm on a ready worker: no load to wait for
        (jobs(2) + jobs(1, model="sd15", prefix="s"), (), 5, 2),  # two cold models
        (jobs(2, model="unknown"), (), 2, 0),  # not a served model: nothing known to load
    ],
)
def test_a_queued_model_resident_nowhere_counts_its_load(queued, holding, desired, cold) -> None:
    workers = (WorkerView("w0", ready=True, gpu_vram_total=(24 * GiB,), loaded_models=frozenset(holding)),)
    decision = model_run(SERVED, queued=queued, workers=workers)
    assert (decision.desired_replicas, decision.inputs.cold_models) == (desired, cold)
    if cold:
        assert f"{cold} queued models to load" in decision.message()


@pytest.mark.parametrize(
    ("models", "floor"),
    [
        ((Model("a", 7 * GiB, min_warm=2),), 2),  # two copies, each on its own GPU
        ((Model("a", 7 * GiB, min_warm=1), Model("b", 7 * GiB, min_warm=1)), 1),  # 14 GiB fit one GPU
        ((Model("a", 16 * GiB, min_warm=1), Model("b", 16 * GiB, min_warm=1)), 2),  # 32 GiB do not
        ((Model("a", 7 * GiB),), 0),
    ],
)
def test_min_warm_keeps_enough_workers_for_its_copies_even_when_idle(models, floor) -> None:
    decision = model_run(models)
    assert decision.desired_replicas == floor == decision.inputs.warm_floor
    assert warm_floor(models, WorkerShape(24 * GiB, gpus_per_worker=2)) == math.ceil(floor / 2) or floor == 0


def test_a_worker_holding_one_of_the_last_min_warm_copies_is_drained_last() -> None:
    workers = (
        WorkerView("keeps-a", ready=True, loaded_models=frozenset({"a"})),
        WorkerView("holds-b", ready=True, loaded_models=frozenset({"b"})),
        WorkerView("holds-nothing", ready=True),
    )
    decision = decide(
        fast(),
        replicas=0,
        shape=SHAPE,
        queued=(),
        running=(),
        workers=workers,
        state=SizingState(idle_since=0.0),
        now=1000.0,
        models=(Model("a", 7 * GiB, min_warm=1), Model("b", 7 * GiB)),
    )
    assert decision.desired_replicas == 1
    assert set(decision.drain) == {"holds-b", "holds-nothing"}


def test_bad_models_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="minWarm must be >= 0"):
        Model("a", GiB, min_warm=-1)
