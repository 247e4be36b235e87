"""A dispatch round (gpufleet.core.dispatch.plan): queue order through the placer, with backfill.

The properties hold for every fleet and queue drawn: no GPU is over-committed in VRAM or job
slots, nothing lands on a worker that is not ready, is draining, or lost an earlier attempt of
the job while another worker could take it, and no job is placed ahead of a higher one that
would have fit on the capacity left at its turn.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.core.dispatch import Plan, QueuedJob, plan
from gpufleet.core.placement import Demand, DemandMix, Gpu, Worker, observe

GiB = 2**30
PRODUCTS = ("NVIDIA-A100-SXM4-80GB", "NVIDIA-L4", "Tesla-T4")
SIZES_GIB = (16, 24, 80)


def gpu(
    uuid: str,
    total_gib: int = 24,
    free_gib: float | None = None,
    jobs: int = 0,
    max_jobs: int = 4,
    **kwargs: object,
) -> Gpu:
    free = total_gib if free_gib is None else free_gib
    return Gpu(uuid, "NVIDIA-L4", total_gib * GiB, int(free * GiB), jobs, max_jobs, **kwargs)  # type: ignore[arg-type]


def worker(name: str, *gpus: Gpu, **kwargs: object) -> Worker:
    return Worker(name, gpus or (gpu(f"{name}-g0"),), **kwargs)  # type: ignore[arg-type]


def queued(key: str, vram_gib: float, **kwargs: object) -> QueuedJob:
    return QueuedJob(f"ns/{key}", "tiny-sd", int(vram_gib * GiB), **kwargs)  # type: ignore[arg-type]


def placed(result: Plan) -> dict[str, str]:
    return {a.key.removeprefix("ns/"): a.placement.worker for a in result.assignments}


# --- strategies -------------------------------------------------------------------------------


@st.composite
def gpus_of(draw: st.DrawFn, worker_name: str, max_jobs: int) -> tuple[Gpu, ...]:
    count = draw(st.integers(1, 3))
    result = []
    for index in range(count):
        total = draw(st.sampled_from(SIZES_GIB)) * GiB
        jobs = draw(st.integers(0, max_jobs))
        free = draw(st.integers(0, total)) if draw(st.booleans()) else total
        result.append(
            Gpu(f"{worker_name}-g{index}", draw(st.sampled_from(PRODUCTS)), total, free, jobs, max_jobs)
        )
    return tuple(result)


@st.composite
def fleets(draw: st.DrawFn, max_workers: int = 4) -> list[Worker]:
    max_jobs = draw(st.integers(1, 4))  # one pool: one maxJobsPerGPU
    workers = []
    for index in range(draw(st.integers(1, max_workers))):
        name = f"w{index}"
        workers.append(
            Worker(
                name,
                draw(gpus_of(name, max_jobs)),
                on_disk=frozenset(draw(st.sets(st.sampled_from(["tiny-sd", "sdxl"]), max_size=2))),
                ready=draw(st.booleans()) or draw(st.booleans()),  # mostly ready
                draining=draw(st.integers(0, 4)) == 0,
            )
        )
    return workers


vram = st.integers(1, 30).map(lambda n: n * GiB // 2) | st.integers(1, 80 * GiB)


@st.composite
def queues(draw: st.DrawFn, names: Sequence[str], max_gpus: int = 2) -> list[QueuedJob]:
    count = draw(st.integers(0, 10))
    return [
        QueuedJob(
            f"ns/j{index}",
            draw(st.sampled_from(["tiny-sd", "sdxl"])),
            draw(vram),
            gpus=draw(st.integers(1, max_gpus)),
            products=frozenset(draw(st.sets(st.sampled_from(PRODUCTS), max_size=2))),
            avoid=frozenset(draw(st.sets(st.sampled_from(list(names)), max_size=2)))
            if names
            else frozenset(),
        )
        for index in range(count)
    ]


@st.composite
def mixes(draw: st.DrawFn) -> DemandMix | None:
    if draw(st.booleans()):
        return None
    mix = DemandMix()
    for _ in range(draw(st.integers(1, 6))):
        mix = observe(mix, Demand(gpus=draw(st.integers(1, 2)), vram=draw(vram)))
    return mix


@st.composite
def rounds(draw: st.DrawFn, max_workers: int = 4, max_gpus: int = 2):
    workers = draw(fleets(max_workers))
    jobs = draw(queues([w.name for w in workers], max_gpus))
    return workers, jobs, draw(mixes())


def fits(job: QueuedJob, gpus: Sequence[Gpu], free: dict[str, int], jobs: dict[str, int]) -> bool:
    """Whether ``job`` fits on these GPUs of one worker with ``free`` VRAM and ``jobs`` running."""
    room = [
        g
        for g in gpus
        if free[g.uuid] >= job.vram
        and jobs[g.uuid] < g.max_jobs
        and (not job.products or g.product in job.products)
    ]
    return len(room) >= job.gpus


def could_ever_host(job: QueuedJob, w: Worker) -> bool:
    """Whether ``w`` could take ``job`` were it idle: enough allowed GPUs that are big enough."""
    big = [g for g in w.gpus if g.vram_total >= job.vram and (not job.products or g.product in job.products)]
    return len(big) >= job.gpus


def eligible(w: Worker) -> bool:
    return w.ready and not w.draining


def avoided_for(job: QueuedJob, workers: Sequence[Worker]) -> set[str]:
    """The workers ``job`` must not go to: those it avoids, unless no other worker could ever take it."""
    others = [w for w in workers if eligible(w) and w.name not in job.avoid]
    return set(job.avoid) if any(could_ever_host(job, w) for w in others) else set()


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(drawn=rounds())
def test_no_gpu_is_over_committed(drawn: tuple[list[Worker], list[QueuedJob], DemandMix | None]) -> None:
    workers, jobs, mix = drawn
    result = plan(jobs, workers, mix)
    by_uuid = {g.uuid: g for w in workers for g in w.gpus}
    vram_taken: dict[str, int] = defaultdict(int)
    jobs_added: dict[str, int] = defaultdict(int)
    vram_of = {j.key: j.vram for j in jobs}
    for assignment in result.assignments:
        p = assignment.placement
        assert p.vram == (vram_of[assignment.key],) * len(p.gpus)
        for uuid, reserved in zip(p.gpus, p.vram, strict=True):
            vram_taken[uuid] += reserved
            jobs_added[uuid] += 1
    for uuid, taken in vram_taken.items():
        assert taken <= by_uuid[uuid].vram_free
        assert by_uuid[uuid].jobs + jobs_added[uuid] <= by_uuid[uuid].max_jobs


@settings(max_examples=300, deadline=None)
@given(drawn=rounds())
def test_every_job_is_placed_or_waits_with_a_reason_and_placements_match_the_job(
    drawn: tuple[list[Worker], list[QueuedJob], DemandMix | None],
) -> None:
    workers, jobs, mix = drawn
    result = plan(jobs, workers, mix)
    by_name = {w.name: w for w in workers}
    placed_keys = [a.key for a in result.assignments]
    assert sorted(placed_keys + list(result.waiting)) == sorted(j.key for j in jobs)
    assert placed_keys == [j.key for j in jobs if j.key in set(placed_keys)]  # in queue order
    assert all(no_fit.reason for no_fit in result.waiting.values())
    for assignment, job in ((a, next(j for j in jobs if j.key == a.key)) for a in result.assignments):
        p = assignment.placement
        w = by_name[p.worker]
        assert eligible(w), f"{job.key} placed on {w.name}, ready={w.ready} draining={w.draining}"
        assert p.worker not in avoided_for(job, workers)
        assert len(p.gpus) == len(set(p.gpus)) == job.gpus
        on_worker = {g.uuid: g for g in w.gpus}
        assert set(p.gpus) <= set(on_worker)
        if job.products:
            assert {on_worker[u].product for u in p.gpus} <= job.products


@settings(max_examples=300, deadline=None)
@given(drawn=rounds())
def test_no_job_is_placed_while_a_higher_one_that_fit_at_its_turn_waits(
    drawn: tuple[list[Worker], list[QueuedJob], DemandMix | None],
) -> None:
    """Backfill only ever uses capacity the jobs ahead could not use: a waiting job did not fit on
    any worker it may use, given what the jobs placed ahead of it had taken, or it waits for a
    busy GPU holding its model (one a job ahead took for it)."""
    workers, jobs, mix = drawn
    result = plan(jobs, workers, mix)
    free = {g.uuid: g.vram_free for w in workers for g in w.gpus}
    running = {g.uuid: g.jobs for w in workers for g in w.gpus}
    holding: dict[str, set[str]] = defaultdict(set)
    assignments = {a.key: a.placement for a in result.assignments}
    for job in jobs:
        if job.key in assignments:
            p = assignments[job.key]
            for uuid, reserved in zip(p.gpus, p.vram, strict=True):
                free[uuid] -= reserved
                running[uuid] += 1
                holding[job.model].add(uuid)
            continue
        if result.waiting[job.key].waits_for_warm:
            assert set(result.waiting[job.key].waits_for_warm) <= holding[job.model]
            continue
        skip = avoided_for(job, workers)
        usable = [w for w in workers if eligible(w) and w.name not in skip]
        assert not any(fits(job, w.gpus, free, running) for w in usable), (
            f"{job.key} waits although it fit: {result.waiting[job.key].reason}"
        )


@settings(max_examples=300, deadline=None)
@given(drawn=rounds(max_workers=1, max_gpus=1), one_gpu=st.booleans())
def test_single_worker_plan_is_exactly_greedy_in_queue_order(
    drawn: tuple[list[Worker], list[QueuedJob], DemandMix | None], one_gpu: bool
) -> None:
    """On one worker (with one GPU, where the placer has no choice) the round is exactly: walk
    the queue, place each job that fits what is left, skip the others; with several GPUs, a
    job may also wait for the busy GPU that a job ahead loaded its model on."""
    workers, jobs, mix = drawn
    if one_gpu:
        workers = [Worker(workers[0].name, workers[0].gpus[:1], ready=True)]
    w = workers[0]
    result = plan(jobs, workers, mix)
    free = {g.uuid: g.vram_free for g in w.gpus}
    running = {g.uuid: g.jobs for g in w.gpus}
    expected = []
    assignments = {a.key: a.placement for a in result.assignments}
    for job in jobs:
        if eligible(w) and fits(job, w.gpus, free, running):
            if job.key in result.waiting and result.waiting[job.key].waits_for_warm:
                assert not one_gpu
                continue
            expected.append(job.key)
            if one_gpu:
                assert assignments[job.key].gpus == (w.gpus[0].uuid,)
            for uuid in assignments[job.key].gpus if job.key in assignments else ():
                free[uuid] -= job.vram
                running[uuid] += 1
    assert [a.key for a in result.assignments] == expected


# --- examples and failure paths ---------------------------------------------------------------


def test_first_come_first_placed_then_backfill_behind_a_job_that_does_not_fit() -> None:
    workers = [worker("w0", gpu("g0", 24, free_gib=11))]
    result = plan([queued("big", 12), queued("small", 4), queued("medium", 6), queued("more", 1)], workers)
    assert placed(result) == {"small": "w0", "medium": "w0", "more": "w0"}
    assert set(result.waiting) == {"ns/big"}
    assert result.waiting["ns/big"].needed_vram == 12 * GiB
    assert result.waiting["ns/big"].largest_free_vram == 11 * GiB


def test_job_slots_limit_sharing_even_with_vram_left() -> None:
    workers = [worker("w0", gpu("g0", 80, jobs=1, max_jobs=2))]
    result = plan([queued("a", 1), queued("b", 1)], workers)
    assert placed(result) == {"a": "w0"}
    assert "job slot" in result.waiting["ns/b"].reason


def test_not_ready_and_draining_workers_get_nothing_and_the_reason_says_so() -> None:
    workers = [worker("starting", ready=False), worker("leaving", draining=True)]
    result = plan([queued("a", 1)], workers)
    assert result.assignments == ()
    reason = result.waiting["ns/a"].reason
    assert "1 not ready" in reason and "1 draining" in reason


def test_no_workers_at_all() -> None:
    result = plan([queued("a", 1)], [])
    assert result.assignments == ()
    assert "no workers" in result.waiting["ns/a"].reason


def test_empty_queue_plans_nothing() -> None:
    assert plan([], [worker("w0")]) == Plan((), {})


def test_a_worker_holding_the_model_is_preferred() -> None:
    workers = [worker("cold"), worker("warm", gpu("warm-g0", models=frozenset({"tiny-sd"})))]
    assert placed(plan([queued("a", 2)], workers)) == {"a": "warm"}


def test_several_gpus_on_one_worker() -> None:
    workers = [worker("one", gpu("o0")), worker("two", gpu("t0"), gpu("t1", free_gib=5))]
    result = plan([queued("pair", 4, gpus=2), queued("pair-too", 2, gpus=2)], workers)
    assert placed(result) == {"pair": "two"}  # "one" has a single GPU
    assert set(result.assignments[0].placement.gpus) == {"t0", "t1"}
    assert "ns/pair-too" in result.waiting  # t1 has 1 GiB left after the first pair


def test_product_allow_list_is_respected() -> None:
    l4 = worker("l4")
    a100 = Worker("a100", (Gpu("a0", "NVIDIA-A100-SXM4-80GB", 80 * GiB, 80 * GiB, 0, 4),))
    result = plan([queued("a", 1, products=frozenset({"NVIDIA-A100-SXM4-80GB"}))], [l4, a100])
    assert placed(result) == {"a": "a100"}


def test_an_avoided_worker_is_skipped_while_another_could_take_the_job() -> None:
    workers = [worker("lost-it"), worker("other", gpu("o0", 24, free_gib=1))]
    job = queued("retry", 4, avoid=frozenset({"lost-it"}))
    result = plan([job], workers)
    assert result.assignments == ()  # waits for "other" rather than going back to "lost-it"
    assert "lost-it" in result.waiting["ns/retry"].reason
    assert "earlier attempt" in result.waiting["ns/retry"].reason
    # Once "other" has room, the job goes there.
    assert placed(plan([job], [worker("lost-it"), worker("other")])) == {"retry": "other"}


def test_an_avoided_worker_is_used_when_no_other_worker_could_ever_take_the_job() -> None:
    """A one-worker pool (its replacement pod keeps the name) must not strand a retried job."""
    job = queued("retry", 4, avoid=frozenset({"pool-0"}))
    assert placed(plan([job], [worker("pool-0")])) == {"retry": "pool-0"}
    # The other workers are too small, of the wrong kind, or not serving: same answer.
    small = worker("small", gpu("s0", 2))
    assert placed(plan([job], [worker("pool-0"), small])) == {"retry": "pool-0"}
    draining = worker("leaving", draining=True)
    assert placed(plan([job], [worker("pool-0"), draining])) == {"retry": "pool-0"}
    # Every worker lost an attempt: any of them will do.
    both = queued("retry", 4, avoid=frozenset({"pool-0", "pool-1"}))
    assert set(placed(plan([both], [worker("pool-0"), worker("pool-1")])).values()) <= {"pool-0", "pool-1"}
    assert len(plan([both], [worker("pool-0"), worker("pool-1")]).assignments) == 1


def test_avoiding_a_worker_that_no_longer_exists_changes_nothing() -> None:
    job = queued("retry", 4, avoid=frozenset({"gone"}))
    assert placed(plan([job], [worker("w0")])) == {"retry": "w0"}


def test_a_round_never_over_commits_through_several_small_jobs() -> None:
    workers = [worker("w0", gpu("g0", 16, max_jobs=64))]
    result = plan([queued(f"j{i}", 1) for i in range(20)], workers)
    assert len(result.assignments) == 16
    assert len(result.waiting) == 4
