"""The placer's compiled loops (gpufleet.core.compiled): caching where it can, and the warm-up
that compiles them before the first real decision."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numba
import pytest

from gpufleet.controller import handlers
from gpufleet.core import compiled as compiled_module
from gpufleet.core import fill, placement
from gpufleet.core.placement import (
    Demand,
    DemandMix,
    Fleet,
    Gpu,
    Job,
    Placement,
    Worker,
    commit,
    observe,
    place,
)

GiB = 2**30
# Those called from Python (the others are compiled into them).
KERNELS = (
    placement._scan,
    placement._candidates,
    placement._host_rooms,
    placement._fill_points,
    placement._best,
    placement._shortfalls,
    placement._contention,
    placement._weighted_take,
    fill.room_shares,
    fill._expected_unfilled,
)


def test_without_a_writable_cache_it_compiles_in_memory(monkeypatch):
    real = numba.njit

    def njit(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real(*args, **kwargs)

    monkeypatch.setattr(compiled_module.numba, "njit", njit)

    @compiled_module.compiled
    def add_one(x):
        return x + 1

    assert add_one(41) == 42
    assert add_one.signatures  # compiled by numba, not left as Python
    assert not compiled_module.disk_cached(add_one)  # no child process can compile it for us
    assert compiled_module.disk_cached(placement._scan)


def test_other_compile_errors_are_not_hidden(monkeypatch):
    def njit(*args, **kwargs):
        raise TypeError("not a function numba can compile")

    monkeypatch.setattr(compiled_module.numba, "njit", njit)
    with pytest.raises(TypeError, match="numba can compile"):
        compiled_module.compiled(lambda x: x)


def test_after_the_warm_up_real_decisions_compile_nothing_more():
    placement.warm_up()
    before = {kernel: len(kernel.signatures) for kernel in KERNELS}
    assert all(before.values())
    # An operator's fleet: some workers report host room, some do not; products differ.
    workers = [
        Worker(
            "a",
            (Gpu("a0", "A10", 24 * GiB, 20 * GiB, jobs=1, max_jobs=4),),
            cpu_free=8000,
            memory_free=64 * GiB,
        ),
        Worker("b", tuple(Gpu(f"b{i}", "H100", 80 * GiB, 80 * GiB, max_jobs=2) for i in range(4))),
        Worker("c", (Gpu("c0", "A10", 24 * GiB, 24 * GiB),), ready=False),
    ]
    fleet = Fleet.of(workers)
    mix = DemandMix()
    for demand in (
        Demand(vram=8 * GiB, cpu=1000, memory=4 * GiB),
        Demand(vram_share=250, products=frozenset({"H100"})),
        Demand(gpus=2, vram=40 * GiB),
        Demand(gpus=0, cpu=500),
        Demand(vram=100 * GiB),  # fits nowhere
    ):
        mix = observe(mix, demand)
        result = place(fleet, Job(demand, model="m"), mix)
        if isinstance(result, Placement):
            fleet = commit(fleet, result)
    assert {kernel: len(kernel.signatures) for kernel in KERNELS} == before
    # One job ran already; the 8 GiB job, the share and the two-GPU job took GPU slots.
    assert int(fleet.jobs.sum()) == 1 + 1 + 1 + 2


LOADS_AFTER_THE_CHILD = """
import asyncio
from gpufleet.controller import handlers
from gpufleet.core import placement
asyncio.run(handlers.warm_up_placer())
print(sum(placement._scan.stats.cache_hits.values()), sum(placement._scan.stats.cache_misses.values()))
"""


def test_the_operator_compiles_the_placer_in_a_child_and_loads_its_machine_code(tmp_path):
    """A process that compiles keeps LLVM's working memory; the operator's loads the cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}  # empty: nothing compiled yet
    ran = subprocess.run(
        [sys.executable, "-c", LOADS_AFTER_THE_CHILD], env=env, capture_output=True, text=True, check=True
    )
    hits, misses = map(int, ran.stdout.split())
    assert hits > 0 and misses == 0  # loaded what the child compiled, compiled nothing itself
    assert any(tmp_path.rglob("*.nbi"))


def test_if_the_child_fails_or_nothing_can_be_cached_the_operator_compiles_itself(monkeypatch):
    started: list[tuple] = []
    real = asyncio.create_subprocess_exec

    async def child(*args, **kwargs):
        started.append(args)
        return await real(sys.executable, "-c", "raise SystemExit(3)")

    monkeypatch.setattr(handlers.asyncio, "create_subprocess_exec", child)
    warmed: list[bool] = []
    monkeypatch.setattr(handlers.placement, "warm_up", lambda: warmed.append(True))
    asyncio.run(handlers.warm_up_placer())
    assert len(started) == 1 and warmed == [True]
    monkeypatch.setattr(handlers.placement, "warm_up_cached", lambda: False)
    asyncio.run(handlers.warm_up_placer())
    assert len(started) == 1 and warmed == [True, True]  # no child where it could not help
