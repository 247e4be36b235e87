"""The placer (gpufleet.core.placement): its rule, its invariants and its failure paths.

An oracle written straight from the rule's definition (plain loops over plain values) checks
the fast array implementation on random fleets.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.core.fill import FILL_SHARE_DECIMALS, SHARE_SCALE
from gpufleet.core.placement import (
    FILL_WEIGHT,
    MODEL_SOURCES,
    SCARCE_WEIGHT,
    Demand,
    DemandMix,
    Fleet,
    Gpu,
    Job,
    NoFit,
    Placement,
    Worker,
    commit,
    observe,
    place,
    score_bin,
)

GiB = 2**30


def gpu(uuid: str, total: int = 16, free: float | None = None, product: str = "A10", **kw) -> Gpu:
    """A GPU that may share up to 4 jobs unless told otherwise."""
    free_bytes = int((total if free is None else free) * GiB)
    return Gpu(uuid, product, total * GiB, free_bytes, **{"max_jobs": 4, **kw})


def worker(name: str, *gpus: Gpu, **kw) -> Worker:
    return Worker(name, tuple(gpus), **kw)


def job(vram: float = 0, gpus: int = 1, share: int = 0, **kw) -> Job:
    model = kw.pop("model", None)
    return Job(Demand(gpus=gpus, vram=int(vram * GiB), vram_share=share, **kw), model)


def mix_of(*demands: Demand, times: int = 1) -> DemandMix:
    mix = DemandMix()
    for _ in range(times):
        for demand in demands:
            mix = observe(mix, demand)
    return mix


# --- the oracle ------------------------------------------------------------------------------


def need_on(demand: Demand, g: Gpu) -> int:
    return g.vram_total * demand.vram_share // SHARE_SCALE if demand.vram_share else demand.vram


def fits(demand: Demand, g: Gpu, free: int, jobs: int) -> bool:
    allowed = not demand.products or g.product in demand.products
    return allowed and jobs < g.max_jobs and free >= need_on(demand, g)


def stranded(w: Worker, free: list[int], jobs: list[int], cpu: float, memory: float, mix) -> float:
    """The definition: free VRAM (in GPUs) the mix's GPU kinds could not use, weighted by how
    often each kind arrives. A GPU's free VRAM counts only for the kinds that may use its
    product (for all of it when the mix has no GPU kind)."""
    kinds = [k for k in mix.kinds if k.gpus > 0]
    total = sum(k.weight for k in kinds)
    idle = 0.0
    for f, g in zip(free, w.gpus, strict=True):
        excluded = sum(k.weight / total for k in kinds if k.products and g.product not in k.products)
        idle += max(f, 0) / g.vram_total * (1 - excluded)
    usable = 0.0
    for k in kinds:
        d = Demand(k.gpus, k.vram, k.vram_share, k.products)
        ok = [fits(d, g, f, j) for g, f, j in zip(w.gpus, free, jobs, strict=True)]
        if sum(ok) >= k.gpus and cpu >= k.cpu and memory >= k.memory:
            room = sum(max(f, 0) / g.vram_total for g, f, o in zip(w.gpus, free, ok, strict=True) if o)
            usable += k.weight / total * room
    return idle - usable


def oracle_increase(w: Worker, chosen: tuple[int, ...], demand: Demand, mix) -> float:
    """Stranded VRAM after minus before, for `demand` on GPUs `chosen` (positions) of `w`."""
    free = [g.vram_free for g in w.gpus]
    jobs = [g.jobs for g in w.gpus]
    cpu = math.inf if w.cpu_free is None else w.cpu_free
    memory = math.inf if w.memory_free is None else w.memory_free
    before = stranded(w, free, jobs, cpu, memory, mix)
    for i in chosen:
        free[i] -= need_on(demand, w.gpus[i])
        jobs[i] += 1
    return stranded(w, free, jobs, cpu - demand.cpu, memory - demand.memory, mix) - before


def oracle_fill(w: Worker, chosen: tuple[int, ...], demand: Demand, mix) -> float:
    """The definition: for a one-GPU job, the change (in GPUs) of the chosen GPU's VRAM expected
    never to be filled by one-GPU jobs arriving from the mix (shares rounded), E(f) below,
    counting only the kinds the worker's host can take: before with its room now, after with
    the job's CPU and memory taken."""
    if demand.gpus != 1:
        return 0.0
    g = w.gpus[chosen[0]]
    cpu = math.inf if w.cpu_free is None else w.cpu_free
    memory = math.inf if w.memory_free is None else w.memory_free

    def never_with(room_cpu: float, room_memory: float):
        ones = [k for k in mix.kinds if k.gpus == 1]
        total = sum(k.weight for k in ones)
        merged: dict[tuple[bool, int, frozenset[str]], float] = {}
        for k in ones:
            key = (k.vram == 0, k.vram_share or k.vram, k.products)
            taken = k.cpu <= room_cpu and k.memory <= room_memory
            merged[key] = merged.get(key, 0.0) + (k.weight / total if taken else 0.0)
        sizes = []
        for (by_share, amount, allowed), share in merged.items():
            share = float(np.round(share, FILL_SHARE_DECIMALS))
            size = amount if by_share else math.ceil(amount * SHARE_SCALE / g.vram_total)
            if share > 0 and (not allowed or g.product in allowed) and size <= SHARE_SCALE:
                sizes.append((size, share))

        @cache
        def never(f: int) -> float:
            fitting = [(size, share) for size, share in sizes if size <= f]
            if not fitting:
                return float(f)
            return sum(share * never(f - size) for size, share in fitting) / sum(s for _, s in fitting)

        return never

    before = SHARE_SCALE * max(g.vram_free, 0) // g.vram_total
    after = SHARE_SCALE * max(g.vram_free - need_on(demand, g), 0) // g.vram_total
    never_after = (
        after if g.jobs + 1 >= g.max_jobs else never_with(cpu - demand.cpu, memory - demand.memory)(after)
    )
    return (never_after - never_with(cpu, memory)(before)) / SHARE_SCALE


def contention(workers: list[Worker], mix) -> dict[str, float]:
    """The definition: per product, over the GPU kinds restricted to products that include it,
    the kind's share of GPU jobs times (the fleet's free VRAM over the free VRAM of the products
    it may use, minus 1). Free VRAM in GPUs, of ready, non-draining workers' GPUs with a slot."""
    free: dict[str, float] = {}
    for w in workers:
        for g in w.gpus:
            usable = w.ready and not w.draining and g.jobs < g.max_jobs
            free[g.product] = free.get(g.product, 0.0) + (max(g.vram_free, 0) / g.vram_total if usable else 0)
    kinds = [k for k in mix.kinds if k.gpus > 0]
    total = sum(k.weight for k in kinds)
    out = dict.fromkeys(free, 0.0)
    for k in kinds:
        allowed = [p for p in free if p in k.products]
        usable = sum(free[p] for p in allowed)
        if k.products and len(allowed) < len(free) and usable > 0:
            for p in allowed:
                out[p] += k.weight / total * (sum(free.values()) / usable - 1)
    return out


def oracle_scarce(workers: list[Worker], w: Worker, chosen: tuple[int, ...], demand: Demand, mix) -> float:
    """The VRAM (in GPUs) the chosen GPUs lose, each times its product's contention."""
    pressure = contention(workers, mix)
    taken = 0.0
    for i in chosen:
        g = w.gpus[i]
        lost = max(g.vram_free, 0) - max(g.vram_free - need_on(demand, g), 0)
        taken += lost / g.vram_total * pressure[g.product]
    return taken


def oracle_score(workers: list[Worker], w: Worker, chosen: tuple[int, ...], demand: Demand, mix) -> float:
    return (
        oracle_increase(w, chosen, demand, mix)
        + FILL_WEIGHT * oracle_fill(w, chosen, demand, mix)
        + SCARCE_WEIGHT * oracle_scarce(workers, w, chosen, demand, mix)
    )


def oracle_candidates(workers: list[Worker], demand: Demand, usable=lambda wi, i: True):
    """Every feasible (worker, GPU positions) for a job, GPU choice as the rule makes it, on
    the GPUs `usable` allows."""
    for wi, w in enumerate(workers):
        if not w.ready or w.draining:
            continue
        if (w.cpu_free is not None and w.cpu_free < demand.cpu) or (
            w.memory_free is not None and w.memory_free < demand.memory
        ):
            continue
        room = [i for i, g in enumerate(w.gpus) if fits(demand, g, g.vram_free, g.jobs) and usable(wi, i)]
        if demand.gpus == 0:
            yield wi, ()
        elif demand.gpus == 1:
            for i in room:
                yield wi, (i,)
        elif len(room) >= demand.gpus:
            left = {
                i: (w.gpus[i].vram_free - need_on(demand, w.gpus[i])) / w.gpus[i].vram_total for i in room
            }
            yield wi, tuple(sorted(room, key=lambda i: (left[i], i))[: demand.gpus])


def as_seen(workers: list[Worker], model: str, model_vram: int) -> list[Worker]:
    """The fleet as a job for `model` sees it: where the model is not resident, its VRAM is
    taken from free VRAM and the idle models' VRAM."""
    return [
        dataclasses.replace(
            w,
            gpus=tuple(
                dataclasses.replace(
                    g,
                    vram_free=g.vram_free if model in g.models else g.vram_free + g.evictable - model_vram,
                    models=frozenset(),
                    idle_models=(),
                )
                for g in w.gpus
            ),
        )
        for w in workers
    ]


def oracle_tier(w: Worker, g: Gpu, demand: Demand, model: str, model_vram: int) -> int:
    """0 resident; 1 on the worker's disk; 3 cold; plus 1 where the load must evict."""
    if model in g.models:
        return 0
    base = 1 if model in w.on_disk else 3
    return base + (model_vram > 0 and g.vram_free - model_vram < need_on(demand, g))


# --- strategies -------------------------------------------------------------------------------

products = st.sampled_from(["A10", "L4", "H100"])


@st.composite
def gpus_st(draw, name: str) -> Gpu:
    total = draw(st.sampled_from([8, 16, 24, 80]))
    free_q = draw(st.integers(0, 8))  # eighths of the GPU free
    max_jobs = draw(st.integers(1, 4))
    models = frozenset(draw(st.sets(st.sampled_from(["sd", "llm"]), max_size=2)))
    idle = tuple(
        (m, total * GiB * draw(st.integers(0, 8 - free_q)) // 16)
        for m in sorted(models)
        if draw(st.booleans())
    )
    return Gpu(
        uuid=name,
        models=models,
        idle_models=idle,
        product=draw(products),
        vram_total=total * GiB,
        vram_free=total * GiB * free_q // 8,
        jobs=draw(st.integers(0, max_jobs)),
        max_jobs=max_jobs,
    )


@st.composite
def workers_st(draw) -> list[Worker]:
    count = draw(st.integers(1, 6))
    out = []
    for i in range(count):
        n = draw(st.integers(0, 4))
        out.append(
            Worker(
                name=f"w{i}",
                gpus=tuple(draw(gpus_st(f"w{i}-g{j}")) for j in range(n)),
                on_disk=frozenset(draw(st.sets(st.sampled_from(["sd", "llm"]), max_size=1))),
                ready=draw(st.booleans() | st.just(True)),
                draining=draw(st.booleans() | st.just(False)) and draw(st.booleans()),
                cpu_free=draw(st.none() | st.integers(0, 16).map(lambda c: c * 1000)),
                memory_free=draw(st.none() | st.integers(0, 64).map(lambda m: m * GiB)),
            )
        )
    return out


@st.composite
def demands_st(draw) -> Demand:
    gpus = draw(st.integers(0, 3))
    if gpus == 0:
        return Demand(gpus=0, cpu=draw(st.integers(0, 8)) * 1000)
    by_share = draw(st.booleans())
    return Demand(
        gpus=gpus,
        vram=0 if by_share else draw(st.integers(1, 16)) * GiB,
        vram_share=draw(st.sampled_from([125, 250, 500, 750, 1000])) if by_share else 0,
        products=frozenset(draw(st.sets(products, max_size=2))),
        cpu=draw(st.integers(0, 8)) * 1000,
        memory=draw(st.integers(0, 16)) * GiB,
    )


@st.composite
def mixes_st(draw) -> DemandMix:
    mix = DemandMix(half_life=draw(st.sampled_from([2.0, 10.0, 1000.0])))
    for demand in draw(st.lists(demands_st(), max_size=8)):
        mix = observe(mix, demand)
    return mix


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(
    workers=workers_st(),
    demand=demands_st(),
    mix=mixes_st(),
    model=st.sampled_from([None, "sd"]),
    model_gib=st.sampled_from([0, 2, 6]),
)
def test_the_choice_is_the_rules_best_and_never_over_commits(workers, demand, mix, model, model_gib):
    model_vram = model_gib * GiB if model is not None else 0
    fleet = Fleet.of(workers)
    result = place(fleet, Job(demand, model, model_vram), mix)
    aware = model is not None and demand.gpus > 0
    seen = as_seen(workers, model, model_vram) if aware else workers
    tiers = [[oracle_tier(w, g, demand, model, model_vram) if aware else 0 for g in w.gpus] for w in workers]
    candidates = list(oracle_candidates(seen, demand))
    if not candidates:
        assert isinstance(result, NoFit)
        return

    # Model locality: the best tier at which a candidate exists.
    def within(tier: int):
        return lambda wi, i: tiers[wi][i] <= tier

    best_tier = min(t for t in range(5) if any(oracle_candidates(seen, demand, within(t))))
    warm = [
        g.uuid
        for w, row in zip(workers, tiers, strict=True)
        for g, t in zip(w.gpus, row, strict=True)
        if aware and t == 0 and w.ready and not w.draining
        if not demand.products or g.product in demand.products
    ]
    warm_room = any(
        tiers[wi][i] == 0 and fits(demand, g, g.vram_free, g.jobs)
        for wi, w in enumerate(seen)
        if w.ready
        and not w.draining
        and (w.cpu_free is None or w.cpu_free >= demand.cpu)
        and (w.memory_free is None or w.memory_free >= demand.memory)
        for i, g in enumerate(w.gpus)
    )
    if best_tier > 0 and warm and not warm_room:
        assert isinstance(result, NoFit) and result.waits_for_warm == tuple(warm)
        return
    candidates = list(oracle_candidates(seen, demand, within(best_tier)))
    assert isinstance(result, Placement)
    w = seen[result.worker_index]
    assert result.worker == w.name and w.ready and not w.draining
    positions = tuple(fleet.gpu_uuids.index(u) - fleet.gpu_uuids.index(w.gpus[0].uuid) for u in result.gpus)
    assert len(set(result.gpus)) == demand.gpus == len(result.vram)
    for i, reserved in zip(positions, result.vram, strict=True):
        g = w.gpus[i]
        assert reserved == need_on(demand, g) <= g.vram_free  # never over-committed
        assert g.jobs < g.max_jobs
        assert not demand.products or g.product in demand.products
    assert w.cpu_free is None or w.cpu_free >= demand.cpu
    assert w.memory_free is None or w.memory_free >= demand.memory
    # Then the least increase of stranded plus never-filled VRAM (up to the tie width).
    assert result.holds_model == (aware and best_tier == 0)
    chosen_tier = max((tiers[result.worker_index][i] for i in positions), default=0)
    assert result.model_source == (MODEL_SOURCES[(chosen_tier + 1) // 2] if aware else None)
    loads = tuple(0 if tiers[result.worker_index][i] == 0 else model_vram for i in positions)
    assert result.model_vram == (loads if aware else ())
    best = min(
        score_bin(np.array(oracle_score(seen, seen[wi], chosen, demand, mix))) for wi, chosen in candidates
    )
    assert result.stranded_increase == pytest.approx(oracle_increase(w, positions, demand, mix), abs=1e-7)
    assert result.fill_increase == pytest.approx(oracle_fill(w, positions, demand, mix), abs=1e-7)
    assert result.scarce_use == pytest.approx(oracle_scarce(seen, w, positions, demand, mix), abs=1e-7)
    score = result.stranded_increase + FILL_WEIGHT * result.fill_increase + SCARCE_WEIGHT * result.scarce_use
    assert score_bin(np.array(score)) == best


@PROPERTY
@given(workers=workers_st(), demand=demands_st(), mix=mixes_st())
def test_the_same_inputs_give_the_same_placement(workers, demand, mix):
    first = place(Fleet.of(workers), Job(demand), mix)
    again = place(Fleet.of(list(workers)), Job(demand), mix)
    assert first == again


@PROPERTY
@given(workers=workers_st(), demands=st.lists(demands_st(), min_size=1, max_size=12))
def test_placing_in_a_row_never_over_commits(workers, demands):
    fleet, mix = Fleet.of(workers), DemandMix()
    for demand in demands:
        mix = observe(mix, demand)
        result = place(fleet, Job(demand), mix)
        if isinstance(result, Placement):
            fleet = commit(fleet, result)
    assert (
        fleet.jobs
        <= np.maximum(fleet.max_jobs, np.array([g.jobs for w in workers for g in w.gpus], np.int64))
    ).all()
    originally_free = np.array([g.vram_free for w in workers for g in w.gpus], np.int64)
    assert ((fleet.vram_free >= 0) | (fleet.vram_free == originally_free)).all()
    tracked = np.array([w.cpu_free is not None for w in workers], bool)
    assert (fleet.cpu_free[tracked] >= 0).all()


@PROPERTY
@given(workers=workers_st(), demands=st.lists(demands_st(), min_size=1, max_size=12))
def test_a_job_restricted_to_products_never_lands_on_another(workers, demands):
    # In a row, so the mix holds restricted kinds and the contested products change as GPUs fill.
    fleet, mix = Fleet.of(workers), DemandMix()
    product_of = {g.uuid: g.product for w in workers for g in w.gpus}
    for demand in demands:
        mix = observe(mix, demand)
        result = place(fleet, Job(demand), mix)
        if isinstance(result, Placement):
            assert not demand.products or {product_of[u] for u in result.gpus} <= demand.products
            fleet = commit(fleet, result)


# --- the rule on small, readable fleets ------------------------------------------------------


def test_a_worker_holding_the_model_wins_even_if_fragmentation_prefers_another():
    fleet = Fleet.of(
        [
            worker("cold", gpu("c0", free=4)),  # a perfect fit: 4 GiB job leaves nothing
            worker("warm", gpu("w0", free=16, models=frozenset({"sd"}))),
        ]
    )
    mix = mix_of(Demand(vram=4 * GiB), Demand(vram=12 * GiB))
    assert place(fleet, job(4, model="sd"), mix).worker == "warm"
    assert place(fleet, job(4, model="sd"), mix, prefer_model=False).worker == "cold"
    assert place(fleet, job(4, model="llm"), mix).worker == "cold"  # nobody holds it


def test_fragmentation_keeps_room_for_the_jobs_that_typically_arrive():
    # Typical jobs need 8 GiB. A 4 GiB job on the 12 GiB-free GPU leaves 8 GiB (still useful);
    # on the 10 GiB-free GPU it would leave 6 GiB that no typical job can use.
    fleet = Fleet.of([worker("a", gpu("a0", free=10)), worker("b", gpu("b0", free=12))])
    mix = mix_of(Demand(vram=8 * GiB), times=5)
    result = place(fleet, job(4), mix)
    assert result.worker == "b"
    # Without the mix, best fit takes the tighter GPU.
    assert place(fleet, job(4)).worker == "a"


def test_a_job_goes_where_what_it_leaves_is_likely_to_be_filled():
    # Jobs of 40% and 30% of a GPU arrive equally often. A 30% job on the GPU with 70% free
    # leaves 40%: filled exactly only if a 40% job comes next, else 10% is wasted. On the empty
    # GPU it leaves 70%, which 40% + 30% fill exactly in either order. Both strand nothing now
    # and best fit alone would pick the 70% GPU.
    mix = mix_of(Demand(vram_share=400), Demand(vram_share=300), times=10)
    fleet = Fleet.of([worker("tight", gpu("t", total=10, free=7)), worker("empty", gpu("e", total=10))])
    result = place(fleet, job(share=300), mix)
    assert isinstance(result, Placement)
    assert result.worker == "empty"
    assert result.stranded_increase == pytest.approx(0.0)
    assert result.fill_increase == pytest.approx((25 - 62.5) / SHARE_SCALE)


def test_only_jobs_the_host_can_still_take_fill_what_a_job_leaves():
    # Jobs of 60% (no CPU) and 40% of a GPU (4 CPUs) arrive equally often. A 40% job fits the
    # 40% hole on "spare" exactly, and a 40% job could come later and fill it. "starved" has an
    # empty GPU but only 2 CPUs: only 60% jobs will ever land there, and each leaves 40% that
    # nothing it can take fills. The 40% job completes that GPU (40% + 60%) instead.
    mix = mix_of(Demand(vram_share=600), Demand(vram_share=400, cpu=4000), times=10)
    spare = worker("spare", gpu("s", total=10, free=4))
    starved = worker("starved", gpu("e", total=10), cpu_free=2000)
    result = place(Fleet.of([spare, starved]), job(share=400), mix)
    assert isinstance(result, Placement)
    assert result.worker == "starved"
    # Never filled there: 400 thousandths before (a 60% job, then nothing), none after.
    assert result.fill_increase == pytest.approx(-400 / SHARE_SCALE)
    assert result.stranded_increase == pytest.approx(-0.2, abs=1e-3)  # the mix decays: not quite 1:1
    # A host with the CPUs for 40% jobs too: the exact fit on "spare" wins.
    roomy = worker("roomy", gpu("e", total=10), cpu_free=16000)
    assert place(Fleet.of([spare, roomy]), job(share=400), mix).worker == "spare"


def test_whole_empty_workers_are_kept_for_multi_gpu_jobs():
    fleet = Fleet.of(
        [
            worker("empty", gpu("e0"), gpu("e1")),
            worker("used", gpu("u0", free=8), gpu("u1")),
        ]
    )
    mix = mix_of(Demand(gpus=2, vram_share=1000), Demand(vram=8 * GiB), times=3)
    assert place(fleet, job(8), mix).worker == "used"
    two = place(fleet, job(gpus=2, share=1000), mix)
    assert two.worker == "empty" and two.gpus == ("e0", "e1") and two.vram == (16 * GiB, 16 * GiB)


def test_a_share_is_of_each_chosen_gpu():
    fleet = Fleet.of([worker("w", gpu("big", total=80), gpu("small", total=16, free=8))])
    result = place(fleet, job(share=500))
    assert result.gpus == ("small",) and result.vram == (8 * GiB,)
    result = place(fleet, job(share=1000))  # a whole GPU: only an empty one
    assert result.gpus == ("big",) and result.vram == (80 * GiB,)


def test_products_gpu_count_and_job_slots_are_respected():
    fleet = Fleet.of(
        [
            worker("l4", gpu("l0", product="L4"), gpu("l1", product="L4")),
            worker("a10", gpu("a0", product="A10")),
            worker("busy", gpu("b0", product="H100", jobs=2, max_jobs=2)),
        ]
    )
    assert place(fleet, job(4, products=frozenset({"A10"}))).gpus == ("a0",)
    assert place(fleet, job(4, gpus=2)).worker == "l4"
    assert isinstance(place(fleet, job(4, products=frozenset({"H100"}))), NoFit)


def test_an_unrestricted_job_leaves_a_scarce_product_to_the_jobs_that_need_it():
    # One T4 and eight L4s are free. A tenth of the jobs may only run on a T4, three tenths only
    # on an L4. A whole-GPU job of any product could take the T4, but it has eight L4s to go to;
    # a T4-only job has nowhere else. Counting the restricted jobs alone (more want L4s) would
    # send it to the T4: what counts is what they want against what is free of it.
    scarce = worker("t4", gpu("t0", product="T4"))
    common = worker("l4", *(gpu(f"l{i}", product="L4") for i in range(8)))
    fleet = Fleet.of([scarce, common])
    t4, l4 = frozenset({"T4"}), frozenset({"L4"})
    typical = [Demand(vram_share=1000)] * 6 + [Demand(vram_share=1000, products=l4)] * 3
    mix = mix_of(*typical, Demand(vram_share=1000, products=t4))
    result = place(fleet, job(share=1000), mix)
    assert isinstance(result, Placement)
    assert result.worker == "l4"
    # Taking an L4 counts 1 GPU x 3/10 x (9 free / 8 free of L4s - 1), the T4 1 x 1/10 x (9/1 - 1).
    assert result.scarce_use == pytest.approx(0.3 * (9 / 8 - 1), rel=0.02)  # the mix decays: ~
    on_t4 = place(fleet, job(share=1000, products=t4), mix)
    assert on_t4.worker == "t4" and on_t4.scarce_use == pytest.approx(0.1 * 8, rel=0.02)
    # Where the T4 is the only fit, the unrestricted job takes it.
    only = Fleet.of([scarce, worker("l4", gpu("l0", product="L4", free=8))])
    assert place(only, job(share=1000), mix).worker == "t4"
    # With no restricted jobs in the mix nothing is contested, and the lone T4 is the better
    # pack (it keeps the eight-GPU worker whole).
    unrestricted = mix_of(Demand(vram_share=1000), Demand(gpus=8, vram_share=1000), times=5)
    assert place(fleet, job(share=1000), unrestricted).worker == "t4"


def test_a_job_that_may_use_two_products_takes_the_less_contested_one():
    # One A10 and six L4s are free. A10-only jobs are a tenth of the jobs, L4-only ones three
    # tenths: the lone A10 is the more contested, so a job that may use either takes an L4.
    l4s = (gpu(f"l{i}", product="L4") for i in range(6))
    fleet = Fleet.of([worker("a10", gpu("a0", product="A10")), worker("l4", *l4s)])
    a10, l4 = frozenset({"A10"}), frozenset({"L4"})
    mix = mix_of(
        *[Demand(vram_share=500)] * 4,
        *[Demand(vram_share=500, products=l4)] * 3,
        *[Demand(vram_share=500, products=a10 | l4)] * 2,
        Demand(vram_share=500, products=a10),
    )
    assert place(fleet, job(share=500, products=a10 | l4), mix).worker == "l4"
    assert place(fleet, job(share=500), mix).worker == "l4"
    assert place(fleet, job(share=500, products=a10), mix).worker == "a10"


def test_never_on_a_worker_that_is_not_ready_or_is_draining():
    fleet = Fleet.of(
        [
            worker("down", gpu("d0"), ready=False),
            worker("leaving", gpu("l0"), draining=True),
            worker("up", gpu("u0", free=2)),
        ]
    )
    assert place(fleet, job(2)).worker == "up"
    result = place(fleet, job(4))
    assert isinstance(result, NoFit)
    assert "1 not ready" in result.reason and "1 draining" in result.reason
    assert result.largest_free_vram == 2 * GiB and result.needed_vram == 4 * GiB


def test_host_cpu_and_memory_are_respected_where_reported():
    fleet = Fleet.of(
        [
            worker("tight", gpu("t0"), cpu_free=2000, memory_free=8 * GiB),
            worker("roomy", gpu("r0"), cpu_free=32000),
        ]
    )
    assert place(fleet, job(4, cpu=4000)).worker == "roomy"
    assert place(fleet, job(4, memory=16 * GiB)).worker == "roomy"  # untracked memory fits
    result = place(fleet, job(4, cpu=64000))
    assert isinstance(result, NoFit) and "without the host CPU or memory" in result.reason


def test_no_fit_names_the_numbers():
    fleet = Fleet.of([worker("w", gpu("g0", free=3), gpu("g1", free=2.5))])
    result = place(fleet, job(6))
    assert isinstance(result, NoFit)
    assert result.needed_vram == 6 * GiB and result.largest_free_vram == 3 * GiB
    assert "1 GPU(s) with 6.00 GiB VRAM free each" in result.reason
    assert "3.00 GiB" in result.reason
    assert isinstance(place(Fleet.of([]), job(1)), NoFit)
    few = place(Fleet.of([worker("w", gpu("g0"))]), job(1, gpus=2))
    assert isinstance(few, NoFit) and "fewer than 2 GPUs" in few.reason


def test_no_fit_counts_each_reason_once_per_worker():
    a10 = frozenset({"A10"})
    fleet = Fleet.of(
        [
            worker("down", gpu("d0"), gpu("d1"), ready=False),
            worker("leaving", gpu("l0", free=12), gpu("l1", free=12), draining=True),
            worker("tight", gpu("t0", free=10), gpu("t1", free=10), cpu_free=500),
            worker("single", gpu("s0", free=10)),
            worker("other", gpu("o0", free=10, product="L4"), gpu("o1", free=10, product="L4")),
            worker("full", gpu("f0", free=2), gpu("f1", free=3)),
        ]
    )
    result = place(fleet, job(4, gpus=2, products=a10, cpu=1000))
    assert isinstance(result, NoFit)
    assert result.reason.startswith(
        "no worker can take 2 GPU(s) with 4.00 GiB VRAM free each: of 6 workers, 1 not ready, "
        "1 draining, 1 without the host CPU or memory, 1 with fewer than 2 GPUs, "
        "1 without 2 GPUs of ['A10'], 1 with too few GPUs with that VRAM free and a job slot; "
    )
    # Only GPUs of ready, non-draining workers count as free.
    assert result.largest_free_vram == 10 * GiB and "10.00 GiB" in result.reason


def test_commit_takes_the_resources_and_refuses_a_stale_placement():
    fleet = Fleet.of([worker("w", gpu("g0", free=10, max_jobs=2), cpu_free=4000)])
    first = place(fleet, job(6, cpu=1000))
    after = commit(fleet, first)
    assert after.vram_free[0] == 4 * GiB and after.jobs[0] == 1 and after.cpu_free[0] == 3000
    assert fleet.vram_free[0] == 10 * GiB  # the original is unchanged
    with pytest.raises(ValueError, match="no longer have the room"):
        commit(after, first)
    with pytest.raises(ValueError):
        after.vram_free[0] = 0  # read-only


def test_cpu_only_jobs_go_where_they_strand_nothing():
    fleet = Fleet.of(
        [
            worker("gpu-rich", gpu("r0"), cpu_free=8000),
            worker("gpu-full", gpu("f0", free=0), cpu_free=8000),
        ]
    )
    mix = mix_of(Demand(vram=8 * GiB, cpu=4000), times=3)
    result = place(fleet, Job(Demand(gpus=0, cpu=6000)), mix)
    assert result.worker == "gpu-full" and result.gpus == ()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(gpus=-1), "gpus"),
        (dict(vram=GiB, vram_share=500), "not both"),
        (dict(vram_share=1001), "vram_share"),
        (dict(gpus=1), "need vram"),
        (dict(gpus=0, vram=GiB), "need gpus"),
        (dict(cpu=-1, vram=GiB), "cpu"),
    ],
)
def test_bad_demands_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Demand(**kwargs)


def test_bad_inventories_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="vram_free"):
        Gpu("g", "A10", GiB, 2 * GiB)
    with pytest.raises(ValueError, match="max_jobs"):
        Gpu("g", "A10", GiB, GiB, max_jobs=0)
    with pytest.raises(ValueError, match="cpu_free"):
        Worker("w", (), cpu_free=-1)
    with pytest.raises(ValueError, match="unique"):
        Fleet.of([worker("w"), worker("w")])
    with pytest.raises(ValueError, match="half_life"):
        DemandMix(half_life=0)


def test_the_mix_decays_and_stays_bounded():
    mix = DemandMix(half_life=1.0, max_kinds=2)
    for gib in (1, 2, 3):  # each observation weighs twice the one before (half-life: 1)
        mix = observe(mix, Demand(vram=gib * GiB, cpu=1000 * gib))
    assert [k.vram // GiB for k in mix.kinds] == [2, 3]  # the lightest, oldest is dropped
    assert mix.shares() == pytest.approx({k.key: w for k, w in zip(mix.kinds, (1 / 3, 2 / 3), strict=True)})
    mix = observe(mix, Demand(vram=2 * GiB, cpu=2000, memory=8 * GiB))
    two = mix.kinds[0]
    assert two.vram == 2 * GiB and mix.shares()[two.key] == pytest.approx(10 / 14)
    assert two.memory == pytest.approx(8 * GiB * 8 / 10)  # averaged over the kind's jobs
    assert len(observe(mix, Demand(vram=2 * GiB, cpu=9000)).kinds) == 2  # CPU tells kinds apart


def test_a_long_mix_keeps_its_weights_finite():
    mix = DemandMix(half_life=1.0)
    for i in range(3000):
        mix = observe(mix, Demand(vram=(1 + i % 2) * GiB))
    shares = mix.shares()
    assert all(math.isfinite(k.weight) for k in mix.kinds)
    assert shares[(1, 2 * GiB, 0, frozenset(), 0)] == pytest.approx(2 / 3)  # the last one, twice


def test_identical_workers_are_interchangeable_and_the_first_wins():
    same = [worker(f"w{i}", gpu(f"g{i}", free=10)) for i in range(5)]
    mix = mix_of(Demand(vram=8 * GiB), times=3)
    assert place(Fleet.of(same), job(4), mix).worker == "w0"
    # w3 alone can take the job without stranding VRAM the typical 8 GiB jobs could use.
    changed = [*same[:3], worker("w3", gpu("g3", free=4)), same[4]]
    assert place(Fleet.of(changed), job(4), mix).worker == "w3"


@given(st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_many_identical_workers_with_one_different_at_random(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(2, 40))
    odd = int(rng.integers(count))
    workers = [worker(f"w{i}", gpu(f"g{i}a", free=16), gpu(f"g{i}b", free=16)) for i in range(count)]
    workers[odd] = worker(f"w{odd}", gpu(f"g{odd}a", free=16), gpu(f"g{odd}b", free=6))
    mix = mix_of(Demand(vram=6 * GiB), Demand(vram=10 * GiB))
    assert place(Fleet.of(workers), job(6), mix).worker == f"w{odd}"


# --- models: resident, on disk, cold; eviction; warm copies ------------------------------------


def model_job(vram: float, model: str = "sd", model_gib: float = 6, ahead: int = 0) -> Job:
    return Job(Demand(vram=int(vram * GiB)), model, int(model_gib * GiB), queue_ahead=ahead)


@pytest.mark.parametrize(
    ("present", "expected", "source"),
    [
        (("warm", "disk", "cold"), "warm", "resident"),
        (("disk", "cold"), "disk", "disk"),
        (("cold",), "cold", "remote"),
    ],
)
def test_resident_beats_disk_beats_cold(present, expected, source):
    # The cold worker is the best fit by VRAM; locality still decides first.
    workers = {
        "warm": worker("warm", gpu("w0", total=24, free=18, models=frozenset({"sd"}))),
        "disk": worker("disk", gpu("d0", total=24, free=20), on_disk=frozenset({"sd"})),
        "cold": worker("cold", gpu("c0", total=24, free=8)),
    }
    result = place(Fleet.of([workers[name] for name in present]), model_job(2), mix_of(Demand(vram=8 * GiB)))
    assert isinstance(result, Placement)
    assert (result.worker, result.model_source) == (expected, source)
    assert result.holds_model == (source == "resident")
    assert result.model_vram == ((0,) if source == "resident" else (6 * GiB,))
    assert result.vram == (2 * GiB,)


@pytest.mark.parametrize(
    ("idle", "fits"),
    [
        ((("old", 6 * GiB),), True),  # 2 free + 6 idle = 8 = 6 model + 2 job
        ((("old", 5 * GiB),), False),  # 1 short
        ((), False),  # the busy model's VRAM is not evictable
    ],
)
def test_a_load_may_evict_only_idle_models(idle, fits):
    # 16 GiB: 2 free, 6 held by "old", 8 by "busy" (running a job, so never idle).
    g = gpu("g0", free=2, models=frozenset({"old", "busy"}), idle_models=idle)
    result = place(Fleet.of([worker("w", g)]), model_job(2))
    assert isinstance(result, Placement) == fits
    if not fits:
        assert "model sd" in result.reason and "6.00 GiB" in result.reason


def test_a_load_that_needs_no_eviction_beats_one_that_does():
    evicting = gpu("e0", total=24, free=4, models=frozenset({"old"}), idle_models=(("old", 20 * GiB),))
    spare = gpu("s0", total=24, free=20)
    result = place(Fleet.of([worker("a", evicting), worker("b", spare)]), model_job(2))
    assert result.worker == "b"


def test_loads_and_evictions_never_over_commit_a_gpu():
    # 16 GiB GPU: 4 free, "old" idle with 8. Loading "sd" (6) for a 2 GiB job evicts "old".
    g = gpu("g0", free=4, models=frozenset({"old", "pinned"}), idle_models=(("old", 8 * GiB),))
    fleet = Fleet.of([worker("w", g)])
    first = place(fleet, model_job(2))
    assert first.model_vram == (6 * GiB,)
    fleet = commit(fleet, first)
    assert fleet.vram_free[0] + fleet.evictable[0] == 4 * GiB  # 4 + 8 - 6 - 2
    assert "sd" in fleet.gpu_models[0]
    # The same model again needs only the job's VRAM; another model no longer fits.
    second = place(fleet, model_job(2))
    assert second.holds_model and second.model_vram == (0,)
    assert isinstance(place(fleet, model_job(2, model="xl", model_gib=4)), NoFit)
    fleet = commit(fleet, second)
    assert isinstance(place(fleet, model_job(2, model="xl", model_gib=1)), NoFit)
    with pytest.raises(ValueError, match="no longer have the room"):
        commit(fleet, first)


def test_a_job_for_an_idle_resident_model_makes_it_unevictable():
    # "sd" is resident and idle (8 GiB). Its job uses it, so a load of "xl" cannot evict it.
    g = gpu("g0", free=4, models=frozenset({"sd"}), idle_models=(("sd", 8 * GiB),))
    fleet = commit(Fleet.of([worker("w", g)]), place(Fleet.of([worker("w", g)]), model_job(2)))
    assert fleet.evictable[0] == 0 and fleet.gpu_idle[0] == ()
    assert isinstance(place(fleet, model_job(1, model="xl", model_gib=2)), NoFit)


@pytest.mark.parametrize(("ahead", "waits"), [(0, True), (3, True), (4, False), (9, False)])
def test_a_second_warm_copy_is_loaded_only_when_the_queue_needs_it(ahead, waits):
    # The warm GPU is full (one job slot, taken); the cold one has room.
    warm = gpu("w0", free=8, jobs=1, max_jobs=1, models=frozenset({"sd"}))
    fleet = Fleet.of([worker("warm", warm), worker("cold", gpu("c0"))])
    result = place(fleet, model_job(2, ahead=ahead))
    if waits:
        assert isinstance(result, NoFit) and result.waits_for_warm == ("w0",)
        assert "warm copy of model sd" in result.reason
    else:
        assert result.worker == "cold" and result.model_source == "remote"
    # A larger allowance per copy keeps the job waiting longer.
    assert isinstance(place(fleet, model_job(2, ahead=ahead), warm_queue_per_copy=10), NoFit)


def test_no_warm_copy_is_waited_for_on_a_worker_that_takes_no_jobs():
    warm = gpu("w0", free=8, jobs=1, max_jobs=1, models=frozenset({"sd"}))
    fleet = Fleet.of([worker("warm", warm, draining=True), worker("cold", gpu("c0"))])
    assert place(fleet, model_job(2)).worker == "cold"


def test_bad_model_inputs_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="idle_models"):
        gpu("g0", free=4, idle_models=(("sd", GiB),))  # not resident
    with pytest.raises(ValueError, match="must not exceed vram_total"):
        gpu("g0", free=12, models=frozenset({"sd"}), idle_models=(("sd", 8 * GiB),))
    with pytest.raises(ValueError, match="model_vram"):
        Job(Demand(vram=GiB), "sd", -1)
    with pytest.raises(ValueError, match="model_vram needs a model"):
        Job(Demand(vram=GiB), None, GiB)
