"""VRAM admission: which GPU a new run goes on, or why it goes nowhere. Pure functions.

A GPU's budget is its total memory less the resident model weights and the reservations of
its running jobs. A run is admitted where its reservation fits and the GPU runs fewer than
``max_jobs`` runs; among those, the GPU left with the least free memory (best fit), so large
gaps stay open for large jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GpuBudget:
    uuid: str
    total_bytes: int
    resident_bytes: int = 0  # model weights loaded on this GPU
    reservations: dict[str, int] = field(default_factory=dict)  # run id -> bytes

    @property
    def reserved_bytes(self) -> int:
        return self.resident_bytes + sum(self.reservations.values())

    @property
    def admittable_bytes(self) -> int:
        return max(0, self.total_bytes - self.reserved_bytes)


@dataclass(frozen=True)
class Admitted:
    gpu_uuid: str


@dataclass(frozen=True)
class Refused:
    reason: str  # a protocol.Reason value
    message: str
    asked_bytes: int
    free_bytes: int


def choose_gpu(gpus: list[GpuBudget], asked_bytes: int, max_jobs: int) -> Admitted | Refused:
    """Best-fit GPU for a run that reserves ``asked_bytes``, or the refusal with the numbers."""
    if not gpus:
        return Refused("InsufficientVRAM", "this worker has no GPU", asked_bytes, 0)
    most_free = max(gpu.admittable_bytes for gpu in gpus)
    with_slots = [gpu for gpu in gpus if len(gpu.reservations) < max_jobs]
    if not with_slots:
        return Refused(
            "TooManyJobs",
            f"every GPU already runs {max_jobs} jobs (maxJobsPerGpu)",
            asked_bytes,
            most_free,
        )
    fitting = [gpu for gpu in with_slots if gpu.admittable_bytes >= asked_bytes]
    if not fitting:
        free = max(gpu.admittable_bytes for gpu in with_slots)
        return Refused(
            "InsufficientVRAM",
            f"vramBytes asked {asked_bytes} bytes ({_gib(asked_bytes)}) but the most free on "
            f"any GPU with a job slot is {free} bytes ({_gib(free)})",
            asked_bytes,
            free,
        )
    best = min(fitting, key=lambda gpu: (gpu.admittable_bytes - asked_bytes, gpu.uuid))
    return Admitted(best.uuid)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
