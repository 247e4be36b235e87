"""VRAM admission: which GPU a new run goes on, what it evicts there, or why it goes nowhere.
Pure functions.

A GPU's memory holds models (resident, or being loaded) and the reservations of its runs;
together they never exceed its total. A run needs its model on its GPU: where the model is
already there (resident or loading) it needs only its own reservation, elsewhere the model's
VRAM as well. Room may be made by evicting idle, unpinned models, chosen by the cache policy
(`modelcache.choose_evictions`); a model a run needs or that is loading is never evicted.

A LoRA needs its base on the same GPU: where the base is there it needs only its own bytes,
elsewhere the base's too; its base is never evicted for it.

Among the GPUs with a free job slot where the run fits, the order of preference is: the model
is resident, then it is loading (the run shares that load), then (for a LoRA) its base is
there, then no eviction is needed, then evicting makes room; ties go to the GPU left with the
least free memory (best fit), so large gaps stay open for large jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .modelcache import CachedModel, choose_evictions, evictable_bytes


@dataclass
class GpuBudget:
    uuid: str
    total_bytes: int
    models: dict[str, CachedModel] = field(default_factory=dict)  # resident or loading here
    loading: set[str] = field(default_factory=set)  # names among ``models`` still loading
    reservations: dict[str, int] = field(default_factory=dict)  # run id -> bytes

    @property
    def models_bytes(self) -> int:
        return sum(model.size_bytes for model in self.models.values())

    @property
    def jobs_bytes(self) -> int:
        return sum(self.reservations.values())

    @property
    def reserved_bytes(self) -> int:
        return self.models_bytes + self.jobs_bytes

    @property
    def admittable_bytes(self) -> int:
        return max(0, self.total_bytes - self.reserved_bytes)

    @property
    def evictable_bytes(self) -> int:
        return evictable_bytes(self.models.values())


@dataclass(frozen=True)
class Admitted:
    gpu_uuid: str
    evict: tuple[str, ...] = ()  # models to evict from that GPU first, least recently used first
    resident: bool = False  # the model is loaded there: the run starts at once
    loading: bool = False  # the model is being loaded there: the run waits on that load


@dataclass(frozen=True)
class Refused:
    reason: str  # a protocol.Reason value
    message: str
    asked_bytes: int
    free_bytes: int


def choose_gpu(
    gpus: list[GpuBudget],
    model: str,
    model_bytes: int,
    asked_bytes: int,
    max_jobs: int,
    base: str | None = None,
    base_bytes: int = 0,
) -> Admitted | Refused:
    """Where a run of ``model`` (``model_bytes`` per resident copy) that reserves ``asked_bytes``
    goes, and what it evicts there; or the refusal with the numbers. A LoRA names its
    ``base`` model and the ``base_bytes`` of a resident copy of it."""
    if not gpus:
        return Refused("InsufficientVRAM", "this worker has no GPU", model_bytes + asked_bytes, 0)
    with_slots = [gpu for gpu in gpus if len(gpu.reservations) < max_jobs]
    if not with_slots:
        return Refused(
            "TooManyJobs",
            f"every GPU already runs {max_jobs} jobs (maxJobsPerGpu)",
            asked_bytes,
            max(gpu.admittable_bytes for gpu in gpus),
        )
    choices = []
    closest: tuple[int, int, GpuBudget] | None = None  # (room - need, need, gpu) of the nearest miss
    needed = {model, base} - {None}
    for gpu in with_slots:
        present = model in gpu.models
        base_present = base is not None and base in gpu.models
        need = asked_bytes if present else model_bytes + asked_bytes
        if base is not None and not present and not base_present:
            need += base_bytes
        # The run's own model (and its base) is in use from admission on: never evicted for it.
        others = [m for m in gpu.models.values() if m.name not in needed]
        evict = choose_evictions(others, need, gpu.admittable_bytes)
        if evict is None:
            room = gpu.admittable_bytes + evictable_bytes(others)
            if closest is None or (room - need, -need) > (closest[0], -closest[1]):
                closest = (room - need, need, gpu)
            continue
        freed = sum(gpu.models[name].size_bytes for name in evict)
        if present:
            rank = 0 if model not in gpu.loading else 1
        else:
            rank = (2 if base_present else 3) * 2 + bool(evict)
        leftover = gpu.admittable_bytes + freed - need
        choices.append((rank, leftover, gpu.uuid, tuple(evict), present, model in gpu.loading))
    if not choices:
        assert closest is not None
        _, need, gpu = closest
        free = gpu.admittable_bytes
        room = free + evictable_bytes(m for m in gpu.models.values() if m.name not in needed)
        what = (
            f"vramBytes asked {asked_bytes} bytes ({_gib(asked_bytes)})"
            if model in gpu.models
            else f"model {model} ({model_bytes} bytes, {_gib(model_bytes)}, not resident) plus "
            f"vramBytes asked {asked_bytes} bytes: {need} bytes ({_gib(need)})"
        )
        return Refused(
            "InsufficientVRAM",
            f"{what}, but the most any GPU with a job slot could give is {room} bytes ({_gib(room)}) "
            f"on {gpu.uuid}: {free} free and {room - free} in idle models it may evict",
            need,
            room,
        )
    _, _, uuid, evicted, present, loading = min(choices)
    return Admitted(uuid, evicted, resident=present and not loading, loading=loading)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
