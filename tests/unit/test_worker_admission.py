"""VRAM admission: best fit, job slots, and refusals that carry the numbers."""

from __future__ import annotations

from gpufleet_worker.admission import Admitted, GpuBudget, Refused, choose_gpu

GIB = 2**30


def test_admits_on_the_gpu_it_fills_best() -> None:
    roomy = GpuBudget("GPU-roomy", total_bytes=80 * GIB, resident_bytes=2 * GIB)
    snug = GpuBudget("GPU-snug", total_bytes=16 * GIB, resident_bytes=2 * GIB, reservations={"a": 10 * GIB})
    assert choose_gpu([roomy, snug], 3 * GIB, max_jobs=4) == Admitted("GPU-snug")
    assert choose_gpu([roomy, snug], 5 * GIB, max_jobs=4) == Admitted("GPU-roomy")


def test_a_job_that_exactly_fits_is_admitted() -> None:
    gpu = GpuBudget("GPU-0", total_bytes=8 * GIB, resident_bytes=GIB, reservations={"a": 3 * GIB})
    assert gpu.admittable_bytes == 4 * GIB
    assert choose_gpu([gpu], 4 * GIB, max_jobs=4) == Admitted("GPU-0")
    assert isinstance(choose_gpu([gpu], 4 * GIB + 1, max_jobs=4), Refused)


def test_refusal_says_how_much_was_asked_and_how_much_is_free() -> None:
    gpus = [
        GpuBudget("GPU-0", total_bytes=8 * GIB, resident_bytes=GIB),
        GpuBudget("GPU-1", total_bytes=8 * GIB, resident_bytes=GIB, reservations={"a": 6 * GIB}),
    ]
    refused = choose_gpu(gpus, 10 * GIB, max_jobs=4)
    assert isinstance(refused, Refused)
    assert refused.reason == "InsufficientVRAM"
    assert (refused.asked_bytes, refused.free_bytes) == (10 * GIB, 7 * GIB)
    assert str(10 * GIB) in refused.message and str(7 * GIB) in refused.message


def test_a_full_gpu_is_skipped_even_with_vram_left() -> None:
    busy = GpuBudget("GPU-busy", total_bytes=80 * GIB, reservations={"a": GIB, "b": GIB})
    small = GpuBudget("GPU-small", total_bytes=4 * GIB)
    assert choose_gpu([busy, small], 2 * GIB, max_jobs=2) == Admitted("GPU-small")
    refused = choose_gpu([busy, small], 8 * GIB, max_jobs=2)
    assert isinstance(refused, Refused) and refused.free_bytes == 4 * GIB


def test_every_gpu_at_its_job_limit_is_too_many_jobs() -> None:
    busy = GpuBudget("GPU-0", total_bytes=80 * GIB, reservations={"a": GIB})
    refused = choose_gpu([busy], GIB, max_jobs=1)
    assert isinstance(refused, Refused) and refused.reason == "TooManyJobs"
    assert "maxJobsPerGpu" in refused.message


def test_no_gpu_admits_nothing() -> None:
    refused = choose_gpu([], GIB, max_jobs=4)
    assert isinstance(refused, Refused) and refused.free_bytes == 0


def test_models_heavier_than_the_gpu_leave_nothing_admittable() -> None:
    gpu = GpuBudget("GPU-0", total_bytes=GIB, resident_bytes=2 * GIB)
    assert gpu.admittable_bytes == 0
