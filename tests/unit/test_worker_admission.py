"""VRAM admission: where the model is warm first, then no eviction, then eviction that makes
room; best fit among equals; job slots; refusals that carry the numbers."""

from __future__ import annotations

import pytest

from gpufleet_worker.admission import Admitted, GpuBudget, Refused, choose_gpu
from gpufleet_worker.modelcache import CachedModel

GIB = 2**30


def gpu(
    uuid: str,
    total: int = 16,
    models: dict[str, int] | None = None,
    jobs: dict[str, int] | None = None,
    busy: frozenset[str] = frozenset(),
    pinned: frozenset[str] = frozenset(),
    loading: frozenset[str] = frozenset(),
) -> GpuBudget:
    """A GPU of ``total`` GiB holding ``models`` (name -> GiB, used in the order given: the
    first is the least recently used) and running ``jobs`` (run -> GiB)."""
    cached = {
        name: CachedModel(
            name,
            size * GIB,
            float(order),
            in_use=int(name in busy) + int(name in loading),
            pinned=name in pinned,
        )
        for order, (name, size) in enumerate((models or {}).items())
    }
    return GpuBudget(
        uuid,
        total * GIB,
        models=cached,
        loading=set(loading),
        reservations={run: size * GIB for run, size in (jobs or {}).items()},
    )


@pytest.mark.parametrize(
    ("gpus", "model", "model_gib", "asked_gib", "want"),
    [
        # the model is resident on one GPU: the run goes there, even if another is emptier
        ([gpu("A"), gpu("B", models={"sd": 4})], "sd", 4, 1, Admitted("B", resident=True)),
        # resident wins over a GPU that would need no eviction, when the run fits only by eviction
        (
            [gpu("A"), gpu("B", total=8, models={"sd": 4, "old": 3}, jobs={"r": 1})],
            "sd",
            4,
            1,
            Admitted("B", evict=("old",), resident=True),
        ),
        # loading on one GPU: the run waits on that load rather than start a second one
        (
            [gpu("A"), gpu("B", models={"sd": 4}, loading=frozenset({"sd"}))],
            "sd",
            4,
            1,
            Admitted("B", loading=True),
        ),
        # resident beats loading
        (
            [gpu("A", models={"sd": 4}, loading=frozenset({"sd"})), gpu("B", models={"sd": 4})],
            "sd",
            4,
            1,
            Admitted("B", resident=True),
        ),
        # cold everywhere: a GPU with room wins over one where room needs an eviction
        (
            [gpu("A", total=8, models={"x": 6}), gpu("B", total=16, models={"x": 6})],
            "sd",
            4,
            1,
            Admitted("B"),
        ),
        # cold, room everywhere: best fit (the least left over)
        ([gpu("A", total=80), gpu("B", total=16)], "sd", 4, 1, Admitted("B")),
        # cold, room only by eviction: the least recently used idle models go, as few as needed
        (
            [gpu("A", total=8, models={"old": 2, "mid": 2, "new": 2})],
            "sd",
            3,
            2,
            Admitted("A", evict=("old", "mid")),
        ),
        # a busy or pinned model is never evicted, even when least recently used
        (
            [gpu("A", total=8, models={"busy": 3, "pin": 2, "idle": 3}, busy={"busy"}, pinned={"pin"})],
            "sd",
            2,
            1,
            Admitted("A", evict=("idle",)),
        ),
        # a model being loaded is never evicted either
        (
            [gpu("A", total=8, models={"ld": 3, "idle": 3}, loading=frozenset({"ld"}))],
            "sd",
            2,
            1,
            Admitted("A", evict=("idle",)),
        ),
        # the GPU that can evict wins over one that cannot make room
        (
            [gpu("A", total=8, models={"b": 6}, busy={"b"}), gpu("B", total=8, models={"i": 6})],
            "sd",
            2,
            2,
            Admitted("B", evict=("i",)),
        ),
        # exactly fits
        ([gpu("A", total=8, models={"sd": 4}, jobs={"r": 3})], "sd", 4, 1, Admitted("A", resident=True)),
        # a GPU at its job limit is skipped even with VRAM left
        (
            [gpu("A", total=80, models={"sd": 4}, jobs={"r1": 1, "r2": 1}), gpu("B", total=8)],
            "sd",
            4,
            1,
            Admitted("B"),
        ),
    ],
)
def test_choose_gpu(
    gpus: list[GpuBudget], model: str, model_gib: int, asked_gib: int, want: Admitted
) -> None:
    assert choose_gpu(gpus, model, model_gib * GIB, asked_gib * GIB, max_jobs=2) == want


@pytest.mark.parametrize(
    ("gpus", "model", "model_gib", "asked_gib", "asked", "free", "words"),
    [
        # the model plus the run does not fit even after every idle model is evicted
        (
            [gpu("A", total=8, models={"busy": 4, "idle": 2}, busy={"busy"})],
            "sd",
            3,
            2,
            5,
            4,
            ["model sd", "not resident", "2 free and 2147483648 in idle models"],
        ),
        # resident, but the run itself does not fit
        (
            [gpu("A", total=8, models={"sd": 4}, jobs={"r": 3})],
            "sd",
            4,
            2,
            2,
            1,
            ["vramBytes asked 2147483648"],
        ),
        # the numbers are those of the GPU closest to fitting
        (
            [gpu("A", total=8, models={"x": 6}, busy={"x"}), gpu("B", total=8, models={"y": 5}, busy={"y"})],
            "sd",
            2,
            2,
            4,
            3,
            ["GPU", "on B"],
        ),
        # larger than any GPU: refused at once
        ([gpu("A", total=8)], "sd", 10, 1, 11, 8, ["model sd"]),
    ],
)
def test_refusal_carries_the_numbers(
    gpus: list[GpuBudget],
    model: str,
    model_gib: int,
    asked_gib: int,
    asked: int,
    free: int,
    words: list[str],
) -> None:
    refused = choose_gpu(gpus, model, model_gib * GIB, asked_gib * GIB, max_jobs=2)
    assert isinstance(refused, Refused) and refused.reason == "InsufficientVRAM"
    assert (refused.asked_bytes, refused.free_bytes) == (asked * GIB, free * GIB)
    assert str(asked * GIB) in refused.message and str(free * GIB) in refused.message
    for word in words:
        assert word.replace("2 free", f"{2 * GIB} free") in refused.message


def test_every_gpu_at_its_job_limit_is_too_many_jobs() -> None:
    refused = choose_gpu([gpu("A", total=80, jobs={"a": 1})], "sd", GIB, GIB, max_jobs=1)
    assert isinstance(refused, Refused) and refused.reason == "TooManyJobs"
    assert "maxJobsPerGpu" in refused.message


def test_no_gpu_admits_nothing() -> None:
    refused = choose_gpu([], "sd", GIB, GIB, max_jobs=4)
    assert isinstance(refused, Refused) and refused.free_bytes == 0


def test_budget_counts_models_and_jobs() -> None:
    budget = gpu("A", total=8, models={"a": 2, "b": 3}, jobs={"r": 1}, busy={"b"})
    assert (budget.models_bytes, budget.jobs_bytes, budget.reserved_bytes) == (5 * GIB, GIB, 6 * GIB)
    assert (budget.admittable_bytes, budget.evictable_bytes) == (2 * GIB, 2 * GIB)
    assert gpu("B", total=1, models={"big": 2}).admittable_bytes == 0


def test_a_lora_needs_only_its_own_bytes_where_its_base_is_and_never_evicts_its_base() -> None:
    with_base = gpu("with-base", total=8, models={"sd": 4})
    empty = gpu("empty", total=8)
    # Where the base is resident the LoRA's 1 GiB and the job's 1 GiB fit; elsewhere the base's
    # 4 GiB come on top. The GPU holding the base is preferred though the other has more room.
    decision = choose_gpu([empty, with_base], "style", GIB, GIB, 4, base="sd", base_bytes=4 * GIB)
    assert decision == Admitted("with-base")
    # Only 1 GiB left beside the (idle) base: the base is not evicted to make room for its LoRA.
    tight = gpu("tight", total=6, models={"sd": 4, "old": 1})
    decision = choose_gpu([tight], "style", GIB, GIB, 4, base="sd", base_bytes=4 * GIB)
    assert decision == Admitted("tight", evict=("old",))
    full = gpu("full", total=5, models={"sd": 4})
    refused = choose_gpu([full], "style", GIB, GIB, 4, base="sd", base_bytes=4 * GIB)
    assert isinstance(refused, Refused) and refused.reason == "InsufficientVRAM"
    # Without the base anywhere, the LoRA's need includes it.
    small = gpu("small", total=5)
    refused = choose_gpu([small], "style", GIB, GIB, 4, base="sd", base_bytes=4 * GIB)
    assert isinstance(refused, Refused) and refused.asked_bytes == 6 * GIB
