"""Where a job runs: the worker and GPU(s) that keep the fleet best able to take what comes next.

The rule, applied in this order (docs/placement.md says it for users):

1. **Fit.** Only workers that are ready and not draining, whose host has the CPU and memory the
   job asks for (where the worker reports them), and that have ``gpus`` GPUs each with an
   allowed product, the job's VRAM free for admission and fewer jobs than ``max_jobs``.
2. **Model locality** (``prefer_model``): if any fitting worker already holds the job's model,
   only those workers are considered.
3. **Fragmentation.** The choice that least increases the fleet's *stranded* VRAM: free VRAM
   that the jobs which typically arrive could not use. The typical jobs are a decayed
   histogram of recent demands (`DemandMix`) that the caller updates with `observe`. For one
   kind of job, a worker strands all its free VRAM if it cannot host that kind (too few GPUs
   with room, or too little CPU or memory on the host), otherwise the free VRAM on the GPUs
   too small for it. Stranded VRAM is counted in GPUs (free VRAM over each GPU's total) and
   averaged over the kinds by how often each arrives. For a one-GPU job, the change in the
   chosen GPU's VRAM expected *never* to be filled is added (`FILL_WEIGHT`): were the
   one-GPU jobs from the mix that its host can still take to keep landing on it, what would
   stay free (`fill.never_filled`). This looks past the next job: of two holes both usable
   now, it prefers leaving the one that typical jobs fill exactly. Scores that differ by less
   than `STRANDED_TIE` (1/25 of a GPU) are ties: the measure is an estimate, and below that
   the next keys pack better.
4. **Best fit.** The least free VRAM left on the chosen GPUs, again as a fraction of each GPU.
5. **Packing.** The worker with the least free VRAM, so that emptier workers stay whole.
6. **Order.** The first worker, then the first GPU, in the order the fleet lists them.

Everything here is a pure function of frozen values; there is no randomness, so the same
fleet, job and mix always give the same placement. Arrays inside `Fleet` are read-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, TypeVar

import numpy as np

from gpufleet.core.fill import SHARE_SCALE, Size, room_shares, tables_for

UNTRACKED = 2**62  # host CPU / memory of a worker that does not report them: never short
DEFAULT_HALF_LIFE = 1000.0  # jobs after which a demand weighs half as much in the mix
DEFAULT_MAX_KINDS = 64  # distinct demands the mix keeps (the lightest are dropped)
STRANDED_TIE = 0.04  # scores (in GPUs) closer than this are ties
FILL_WEIGHT = 1.0  # weight of the change in expected never-filled VRAM next to stranded VRAM
_NOISE = 1e-9  # differences below this (in GPUs) are float noise
_NOISE_PER_TIE = round(STRANDED_TIE / _NOISE)


@dataclass(frozen=True)
class Gpu:
    """One GPU of a worker, as the worker's inventory reports it."""

    uuid: str
    product: str  # nvidia.com/gpu.product
    vram_total: int  # bytes
    vram_free: int  # bytes free for admission: total minus reservations of jobs running here
    jobs: int = 0  # jobs running on it now
    max_jobs: int = 1  # the pool's maxJobsPerGPU

    def __post_init__(self) -> None:
        if self.vram_total <= 0:
            raise ValueError(f"gpu {self.uuid}: vram_total must be > 0, got {self.vram_total}")
        if self.vram_free > self.vram_total:
            raise ValueError(
                f"gpu {self.uuid}: vram_free ({self.vram_free}) must not exceed "
                f"vram_total ({self.vram_total})"
            )
        if self.jobs < 0:
            raise ValueError(f"gpu {self.uuid}: jobs must be >= 0, got {self.jobs}")
        if self.max_jobs < 1:
            raise ValueError(f"gpu {self.uuid}: max_jobs must be >= 1, got {self.max_jobs}")


@dataclass(frozen=True)
class Worker:
    """A worker pod and its GPUs. ``cpu_free`` / ``memory_free`` are optional host limits."""

    name: str
    gpus: tuple[Gpu, ...]
    models: frozenset[str] = frozenset()  # models loaded on the worker
    ready: bool = True
    draining: bool = False
    cpu_free: int | None = None  # milli-CPU left on the host; None: not tracked
    memory_free: int | None = None  # bytes left on the host; None: not tracked

    def __post_init__(self) -> None:
        for name, value in (("cpu_free", self.cpu_free), ("memory_free", self.memory_free)):
            if value is not None and value < 0:
                raise ValueError(f"worker {self.name}: {name} must be >= 0, got {value}")


@dataclass(frozen=True)
class Demand:
    """What a job needs: ``gpus`` GPUs on one worker, each with ``vram`` bytes free, or with
    ``vram_share`` thousandths of that GPU's VRAM free (1000 = a whole, empty GPU); optional
    GPU products (empty = any) and host CPU (milli) and memory (bytes)."""

    gpus: int = 1
    vram: int = 0
    vram_share: int = 0
    products: frozenset[str] = frozenset()
    cpu: int = 0
    memory: int = 0

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ValueError(f"demand: gpus must be >= 0, got {self.gpus}")
        if self.vram < 0 or not 0 <= self.vram_share <= SHARE_SCALE:
            raise ValueError(
                f"demand: vram must be >= 0 and vram_share within 0..{SHARE_SCALE}, "
                f"got vram={self.vram}, vram_share={self.vram_share}"
            )
        if self.vram and self.vram_share:
            raise ValueError("demand: give vram (bytes) or vram_share (thousandths), not both")
        if self.gpus and not (self.vram or self.vram_share):
            raise ValueError(f"demand: {self.gpus} GPU(s) need vram > 0 or vram_share > 0")
        if not self.gpus and (self.vram or self.vram_share or self.products):
            raise ValueError("demand: vram, vram_share and products need gpus >= 1")
        if self.cpu < 0 or self.memory < 0:
            raise ValueError(f"demand: cpu and memory must be >= 0, got {self.cpu}, {self.memory}")

    def vram_on(self, vram_total: np.ndarray) -> np.ndarray:
        """Bytes this demand needs on GPUs of the given sizes (shares round down)."""
        if self.vram_share:
            return vram_total * self.vram_share // SHARE_SCALE
        return np.full_like(vram_total, self.vram)


@dataclass(frozen=True)
class Job:
    """A job to place: its demand and the model it runs (for model locality)."""

    demand: Demand
    model: str | None = None


# --- the typical job mix -------------------------------------------------------------------

_KindKey = tuple[int, int, int, frozenset[str], int]  # gpus, vram, vram_share, products, cpu


@dataclass(frozen=True)
class Kind:
    """One kind of demand in the mix: all of a demand but its host memory, which is averaged.

    ``weight`` is relative: only its ratio to the other kinds' weights means anything.
    """

    gpus: int
    vram: int
    vram_share: int
    products: frozenset[str]
    cpu: int
    weight: float
    memory: float

    @property
    def key(self) -> _KindKey:
        return (self.gpus, self.vram, self.vram_share, self.products, self.cpu)


def _canonical(kind: Kind) -> tuple[object, ...]:
    """The order of kinds in a mix: grouped by how they ask for VRAM, then by the amount."""
    return (kind.vram == 0, sorted(kind.products), kind.vram_share or kind.vram, kind.gpus, kind.cpu)


@dataclass(frozen=True, eq=False)
class DemandMix:
    """A bounded, decayed histogram of recent job demands: what "typically arrives".

    Each observed demand weighs 1, halving every ``half_life`` observations after it; at most
    ``max_kinds`` kinds (GPU count, VRAM, products, host CPU) are kept, the lightest dropped
    first. Host memory is averaged within a kind. Build it with `DemandMix()` and `observe`.
    """

    kinds: tuple[Kind, ...] = ()  # in `_canonical` order
    half_life: float = DEFAULT_HALF_LIFE
    max_kinds: int = DEFAULT_MAX_KINDS
    # Observations since the weights were last rescaled: the next one weighs 2**(ticks/half_life),
    # which ages every earlier one relatively without touching them.
    ticks: int = 0
    # Derived from `kinds` (computed when not given): their arrays and each key's position.
    _arrays: _MixArrays = field(default=None, repr=False)  # type: ignore[assignment]
    _positions: Mapping[_KindKey, int] = field(default=None, repr=False)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.half_life <= 0:
            raise ValueError(f"mix: half_life must be > 0, got {self.half_life}")
        if self.max_kinds < 1:
            raise ValueError(f"mix: max_kinds must be >= 1, got {self.max_kinds}")
        if self._arrays is None:
            object.__setattr__(self, "_arrays", _MixArrays.of(self.kinds))
        if self._positions is None:
            positions = {kind.key: i for i, kind in enumerate(self.kinds)}
            object.__setattr__(self, "_positions", MappingProxyType(positions))

    def shares(self) -> dict[_KindKey, float]:
        """Each kind's share of the mix (summing to 1)."""
        total = sum(k.weight for k in self.kinds)
        return {k.key: k.weight / total for k in self.kinds}


_RESCALE_AT = 2.0**512  # weights are rescaled long before floats overflow


def observe(mix: DemandMix, demand: Demand) -> DemandMix:
    """The mix after one more job with this demand arrived."""
    key = (demand.gpus, demand.vram, demand.vram_share, demand.products, demand.cpu)
    added = 2.0 ** (mix.ticks / mix.half_life)
    position = mix._positions.get(key)
    if position is not None:
        old = mix.kinds[position]
        weight = old.weight + added
        memory = (old.memory * old.weight + demand.memory * added) / weight
        kind = Kind(*key, weight=weight, memory=memory)
        kinds = (*mix.kinds[:position], kind, *mix.kinds[position + 1 :])
        arrays = mix._arrays.with_kind(position, weight, memory)
        after = DemandMix(kinds, mix.half_life, mix.max_kinds, mix.ticks + 1, arrays, mix._positions)
    else:
        grown = [*mix.kinds, Kind(*key, weight=added, memory=float(demand.memory))]
        if len(grown) > mix.max_kinds:
            grown.remove(min(grown, key=lambda k: k.weight))  # the first of the lightest
        kinds = tuple(sorted(grown, key=_canonical))
        after = DemandMix(kinds, mix.half_life, mix.max_kinds, mix.ticks + 1)
    if 2.0 ** (after.ticks / after.half_life) > _RESCALE_AT:
        scale = 2.0 ** (after.ticks / after.half_life)
        kinds = tuple(Kind(*k.key, weight=k.weight / scale, memory=k.memory) for k in after.kinds)
        after = DemandMix(kinds, after.half_life, after.max_kinds)
    return after


class _Group(NamedTuple):
    """Kinds `start:stop` of `_MixArrays`: one way of asking for VRAM, sorted by the amount."""

    share: bool  # thresholds are thousandths of a GPU (else bytes)
    products: frozenset[str]
    start: int
    stop: int


@dataclass(frozen=True, eq=False)
class _MixArrays:
    """A mix's kinds as arrays, in the mix's order.

    Kinds are grouped by how they ask for VRAM (share or bytes, and products) and sorted by
    the amount within a group, so the kinds of a group that fit a GPU are a prefix of it.
    """

    gpus: np.ndarray  # int64[K]
    threshold: np.ndarray  # int64[K]: vram_share, or vram in bytes
    cpu: np.ndarray  # float64[K]
    memory: np.ndarray  # float64[K]
    weight: np.ndarray  # float64[K], relative
    groups: tuple[_Group, ...]
    # The distinct VRAM sizes of one-GPU kinds (share?, threshold, products), group by group,
    # and each kind's index into them (-1: not a one-GPU kind), for `_fill_increase`.
    fill_sizes: tuple[Size, ...]
    fill_index: np.ndarray  # int64[K]

    @classmethod
    def of(cls, kinds: Sequence[Kind]) -> _MixArrays:
        groups: list[_Group] = []
        for i, k in enumerate(kinds):
            if groups and groups[-1].share == (k.vram == 0) and groups[-1].products == k.products:
                groups[-1] = groups[-1]._replace(stop=i + 1)
            else:
                groups.append(_Group(k.vram == 0, k.products, i, i + 1))
        sizes: dict[Size, int] = {}
        fill_index = [
            sizes.setdefault((k.vram == 0, k.vram_share or k.vram, k.products), len(sizes))
            if k.gpus == 1
            else -1
            for k in kinds
        ]
        return cls(
            gpus=np.array([k.gpus for k in kinds], np.int64),
            threshold=np.array([k.vram_share or k.vram for k in kinds], np.int64),
            cpu=np.array([k.cpu for k in kinds], np.float64),
            memory=np.array([k.memory for k in kinds], np.float64),
            weight=np.array([k.weight for k in kinds], np.float64),
            groups=tuple(groups),
            fill_sizes=tuple(sizes),
            fill_index=np.array(fill_index, np.int64),
        )

    def with_kind(self, position: int, weight: float, memory: float) -> _MixArrays:
        weights, memories = self.weight.copy(), self.memory.copy()
        weights[position], memories[position] = weight, memory
        return _evolve(self, weight=weights, memory=memories)

    def normalized(self) -> _MixArrays:
        """The same kinds weighted by their share of the jobs that use GPUs (CPU-only jobs
        can use no free VRAM, so they weigh nothing in the measure)."""
        weight = np.where(self.gpus > 0, self.weight, 0.0)
        total = weight.sum()
        return _evolve(self, weight=weight / total if total > 0 else weight)

    def fitting(
        self, fleet: Fleet, gpus: np.ndarray, vram_free: np.ndarray, jobs: np.ndarray
    ) -> list[np.ndarray]:
        """Per group, int64[len(gpus)]: how many of its kinds (a prefix) one more job of fits on
        each GPU, were it to have `vram_free` free and `jobs` running."""
        total = fleet.vram_total[gpus]
        slot = jobs < fleet.max_jobs[gpus]
        # The largest share s with floor(total * s / 1000) <= vram_free.
        share = (SHARE_SCALE * (vram_free + 1) + total - 1) // total - 1
        counts = []
        for group in self.groups:
            room = share if group.share else vram_free
            count = np.searchsorted(self.threshold[group.start : group.stop], room, side="right")
            ok = slot & fleet.allowed(group.products)[gpus] if group.products else slot
            counts.append(np.where(ok, count, 0))
        return counts


# --- the fleet -----------------------------------------------------------------------------


_Frozen = TypeVar("_Frozen")


def _evolve(value: _Frozen, **changes: object) -> _Frozen:
    """`dataclasses.replace` for the frozen values here, without re-running ``__init__``: the
    changed fields are derived ones, and a decision makes several of these copies."""
    copy = object.__new__(type(value))
    copy.__dict__.update(value.__dict__, **changes)
    return copy


def _readonly(values: object, dtype: type) -> np.ndarray:
    array: np.ndarray = np.array(values, dtype=dtype)
    array.flags.writeable = False
    return array


class _StateIds:
    """Numbers worker states: equal states, equal numbers. Append-only, so fleets derived from
    one another by `commit` can share it and still compare their workers' numbers."""

    def __init__(self) -> None:
        self._ids: dict[tuple[object, ...], int] = {}

    def of(
        self,
        cpu_free: int,
        memory_free: int,
        vram_total: Sequence[int],
        max_jobs: Sequence[int],
        products: Sequence[str],
        vram_free: Sequence[int],
        jobs: Sequence[int],
    ) -> int:
        """The number of a worker's state, given its host room and its GPUs' columns in order."""
        gpus = tuple(zip(vram_total, max_jobs, products, vram_free, jobs, strict=True))
        return self._ids.setdefault((cpu_free, memory_free, gpus), len(self._ids))


@dataclass(frozen=True, eq=False)
class Fleet:
    """The workers' GPUs as arrays, for fast decisions. Build with `Fleet.of(workers)`.

    A worker's GPUs are contiguous: GPU ``i`` belongs to worker ``gpu_worker[i]``.
    """

    worker_names: tuple[str, ...]
    worker_models: tuple[frozenset[str], ...]
    gpu_uuids: tuple[str, ...]
    products: tuple[str, ...]  # distinct GPU products, sorted
    eligible: np.ndarray  # bool[W]: ready and not draining
    cpu_free: np.ndarray  # int64[W] milli-CPU (UNTRACKED if not reported)
    memory_free: np.ndarray  # int64[W] bytes (UNTRACKED if not reported)
    gpu_count: np.ndarray  # int64[W]
    gpu_worker: np.ndarray  # int64[G]
    gpu_product: np.ndarray  # int64[G], index into `products`
    vram_total: np.ndarray  # int64[G] bytes
    vram_free: np.ndarray  # int64[G] bytes
    jobs: np.ndarray  # int64[G]
    max_jobs: np.ndarray  # int64[G]
    ready: np.ndarray = field(repr=False)  # bool[W]
    draining: np.ndarray = field(repr=False)  # bool[W]
    gpu_start: np.ndarray = field(repr=False)  # int64[W]: index of each worker's first GPU
    # int64[W]: equal numbers for workers whose placements are interchangeable: the same
    # host room and the same GPUs (size, job limit, product) in the same states, in order.
    worker_state: np.ndarray = field(repr=False)
    states: _StateIds = field(repr=False)  # gives those numbers; shared by commits
    gpu_class: np.ndarray = field(repr=False)  # int64[G]: index into `classes`
    classes: tuple[tuple[int, str], ...] = field(repr=False)  # distinct (vram_total, product)
    # `allowed` per set of products asked for; the GPUs' products never change, so fleets
    # derived from one another share it.
    allowed_gpus: dict[frozenset[str], np.ndarray] = field(repr=False)

    @classmethod
    def of(cls, workers: Iterable[Worker]) -> Fleet:
        workers = tuple(workers)
        names = [w.name for w in workers]
        if len(set(names)) != len(names):
            raise ValueError("fleet: worker names must be unique")
        gpus = [g for w in workers for g in w.gpus]
        uuids = [g.uuid for g in gpus]
        if len(set(uuids)) != len(uuids):
            raise ValueError("fleet: GPU uuids must be unique")
        products = tuple(sorted({g.product for g in gpus}))
        product_index = {p: i for i, p in enumerate(products)}
        ready = _readonly([w.ready for w in workers], np.bool_)
        draining = _readonly([w.draining for w in workers], np.bool_)
        count = np.array([len(w.gpus) for w in workers], np.int64)
        start = np.zeros(len(workers), np.int64)
        np.cumsum(count[:-1], out=start[1:])
        classes = tuple(sorted({(g.vram_total, g.product) for g in gpus}))
        class_index = {c: i for i, c in enumerate(classes)}
        states = _StateIds()
        worker_state = [
            states.of(
                UNTRACKED if w.cpu_free is None else w.cpu_free,
                UNTRACKED if w.memory_free is None else w.memory_free,
                [g.vram_total for g in w.gpus],
                [g.max_jobs for g in w.gpus],
                [g.product for g in w.gpus],
                [g.vram_free for g in w.gpus],
                [g.jobs for g in w.gpus],
            )
            for w in workers
        ]
        return cls(
            worker_names=tuple(names),
            worker_models=tuple(w.models for w in workers),
            gpu_uuids=tuple(uuids),
            products=products,
            eligible=_readonly(ready & ~draining, np.bool_),
            cpu_free=_readonly([UNTRACKED if w.cpu_free is None else w.cpu_free for w in workers], np.int64),
            memory_free=_readonly(
                [UNTRACKED if w.memory_free is None else w.memory_free for w in workers], np.int64
            ),
            gpu_count=_readonly([len(w.gpus) for w in workers], np.int64),
            gpu_worker=_readonly([i for i, w in enumerate(workers) for _ in w.gpus], np.int64),
            gpu_product=_readonly([product_index[g.product] for g in gpus], np.int64),
            vram_total=_readonly([g.vram_total for g in gpus], np.int64),
            vram_free=_readonly([g.vram_free for g in gpus], np.int64),
            jobs=_readonly([g.jobs for g in gpus], np.int64),
            max_jobs=_readonly([g.max_jobs for g in gpus], np.int64),
            ready=ready,
            draining=draining,
            gpu_start=_readonly(start, np.int64),
            worker_state=_readonly(worker_state, np.int64),
            states=states,
            gpu_class=_readonly([class_index[g.vram_total, g.product] for g in gpus], np.int64),
            classes=classes,
            allowed_gpus={},
        )

    def allowed(self, products: frozenset[str]) -> np.ndarray:
        """bool[G]: GPUs whose product is in `products` (all GPUs when it is empty)."""
        allowed = self.allowed_gpus.get(products)
        if allowed is None:
            by_product = np.array([not products or p in products for p in self.products], dtype=bool)
            allowed = _readonly(by_product[self.gpu_product], np.bool_)
            self.allowed_gpus[products] = allowed
        return allowed


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where the job goes and what it reserves there."""

    worker: str
    gpus: tuple[str, ...]  # uuids
    vram: tuple[int, ...]  # bytes reserved on each of `gpus`
    cpu: int  # milli-CPU taken on the host
    memory: int  # bytes taken on the host
    holds_model: bool  # the worker already has the job's model loaded
    stranded_increase: float  # GPUs' worth of VRAM the typical jobs can no longer use
    fill_increase: float  # GPUs' worth of VRAM more expected never to be filled (one-GPU jobs)
    worker_index: int  # position of the worker in the fleet
    gpu_indices: tuple[int, ...]  # positions of the GPUs in the fleet


@dataclass(frozen=True)
class NoFit:
    """No worker can take the job now; `reason` says why, with the numbers."""

    reason: str
    needed_vram: int  # bytes per GPU (the largest, for a share of differently sized GPUs)
    largest_free_vram: int  # the most VRAM free on any GPU of a ready, non-draining worker


# --- placing -------------------------------------------------------------------------------


def place(
    fleet: Fleet, job: Job, mix: DemandMix | None = None, *, prefer_model: bool = True
) -> Placement | NoFit:
    """The best placement for `job` by the module's rule, or why there is none.

    Without a mix (or one without GPU jobs) no free VRAM counts as usable, so the job goes
    where it takes the largest fraction of a GPU, then by best fit and packing.
    """
    demand = job.demand
    host_ok = fleet.eligible & (fleet.cpu_free >= demand.cpu) & (fleet.memory_free >= demand.memory)
    need = demand.vram_on(fleet.vram_total)
    room = (
        (fleet.vram_free >= need)
        & (fleet.jobs < fleet.max_jobs)
        & fleet.allowed(demand.products)
        & host_ok[fleet.gpu_worker]
    )
    rooms = np.bincount(fleet.gpu_worker[room], minlength=len(fleet.worker_names))
    feasible = host_ok & (rooms >= demand.gpus)
    if not feasible.any():
        return _no_fit(fleet, demand, host_ok, room, need)

    holders = np.zeros(len(fleet.worker_names), dtype=bool)
    if prefer_model and job.model is not None:
        holders = np.fromiter((job.model in m for m in fleet.worker_models), bool, len(holders))
        if (holders & feasible).any():
            feasible &= holders

    kinds = (mix._arrays if mix is not None else _MixArrays.of(())).normalized()
    distinct = _first_of_identical(fleet, np.flatnonzero(feasible))
    workers, picked, increase, leftover, idle = _evaluate(fleet, demand, kinds, distinct, room, need)
    fill = np.zeros(len(workers))
    if demand.gpus == 1:
        fill = _fill_increase(fleet, kinds, demand, workers, picked[:, 0], need)
    score = increase + FILL_WEIGHT * fill
    # lexsort: the last key is the primary one; equal keys keep fleet order.
    keys = (np.round(idle / _NOISE), np.round(leftover / _NOISE), score_bin(score))
    best = int(np.lexsort(keys)[0])
    worker = int(workers[best])
    chosen = tuple(int(g) for g in picked[best])
    return Placement(
        worker=fleet.worker_names[worker],
        gpus=tuple(fleet.gpu_uuids[g] for g in chosen),
        vram=tuple(int(need[g]) for g in chosen),
        cpu=demand.cpu,
        memory=demand.memory,
        holds_model=bool(holders[worker]),
        stranded_increase=float(increase[best]),
        fill_increase=float(fill[best]),
        worker_index=worker,
        gpu_indices=chosen,
    )


def score_bin(score: np.ndarray) -> np.ndarray:
    """Which `STRANDED_TIE`-wide bin each score falls in. Scores are first snapped to `_NOISE`,
    so two sums of the same terms in another order land in the same bin even on its edge."""
    return np.round(np.round(score / _NOISE) / _NOISE_PER_TIE)


@dataclass(frozen=True, eq=False)
class _WorkerSums:
    """Per candidate worker (in fleet order) and kind, before the placement: how many GPUs
    the kind fits (`hosting`) and their free VRAM (`usable`, in GPUs); per worker its free
    VRAM (`idle`) and which kinds it can host (`host`)."""

    workers: np.ndarray  # int64[S]: fleet index of each candidate worker
    gpus: np.ndarray  # int64[sum of their GPU counts]: their GPUs, worker by worker
    slot: np.ndarray  # int64[same]: each of those GPUs' row in the arrays below
    fitting: list[np.ndarray]  # per group: kinds each of those GPUs fits now
    hosting: np.ndarray  # float64[S, K]
    usable: np.ndarray  # float64[S, K]
    idle: np.ndarray  # float64[S]
    host: np.ndarray  # bool[S, K]

    @classmethod
    def of(cls, fleet: Fleet, kinds: _MixArrays, workers: np.ndarray) -> _WorkerSums:
        sizes = fleet.gpu_count[workers]
        ends = np.cumsum(sizes)
        gpus = np.repeat(fleet.gpu_start[workers] - (ends - sizes), sizes) + np.arange(
            ends[-1] if len(ends) else 0
        )
        slot = np.repeat(np.arange(len(workers)), sizes)
        free = fleet.vram_free[gpus]
        frac = np.maximum(free, 0) / fleet.vram_total[gpus]
        fitting = kinds.fitting(fleet, gpus, free, fleet.jobs[gpus])
        count = len(workers)
        # [0]: hosting, [1]: usable.
        both = np.zeros((2, count, len(kinds.weight)))
        weights = np.concatenate([np.ones(len(gpus)), frac])
        for group, fits in zip(kinds.groups, fitting, strict=True):
            width = group.stop - group.start + 1
            cell = slot * width + fits
            cells = np.concatenate([cell, cell + count * width])
            per = np.bincount(cells, weights, minlength=2 * count * width).reshape(2, count, width)
            # GPUs fitting more than p kinds of the group count for kind p.
            both[:, :, group.start : group.stop] = np.cumsum(per[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]
        hosting, usable = both
        idle = np.bincount(slot, frac, minlength=count)
        host = (
            (hosting >= kinds.gpus)
            & (fleet.cpu_free[workers, None] >= kinds.cpu)
            & (fleet.memory_free[workers, None] >= kinds.memory)
        )
        return cls(workers, gpus, slot, fitting, hosting, usable, idle, host)


def _first_of_identical(fleet: Fleet, workers: np.ndarray) -> np.ndarray:
    """`workers` (ascending) without those identical to an earlier one (`Fleet.worker_state`).
    Identical workers offer identical candidates and the earliest wins every tie, so dropping
    the later ones changes nothing; on a large fleet most workers are identical (untouched),
    so this is most of the speed.
    """
    _, first = np.unique(fleet.worker_state[workers], return_index=True)
    return workers[np.sort(first)]


def _evaluate(
    fleet: Fleet,
    demand: Demand,
    kinds: _MixArrays,
    workers: np.ndarray,
    room: np.ndarray,
    need: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate placements on `workers` (fleet indices, ascending), in fleet order, with
    their keys: (worker per candidate, GPU indices per candidate [C, gpus], increase of
    stranded VRAM, free VRAM left on the chosen GPUs, free VRAM on the worker now), the
    last three in GPUs."""
    sums = _WorkerSums.of(fleet, kinds, workers)
    weight = kinds.weight
    # Kinds the worker hosts now and still would with the job's CPU and memory taken.
    keep = (fleet.cpu_free[sums.workers, None] - demand.cpu >= kinds.cpu) & (
        fleet.memory_free[sums.workers, None] - demand.memory >= kinds.memory
    )
    lost = ((sums.host & ~keep) * sums.usable) @ weight
    if demand.gpus == 0:
        none = np.zeros((len(sums.workers), 0), np.int64)
        return sums.workers, none, lost, np.zeros(len(lost)), sums.idle
    if demand.gpus > 1:
        return _evaluate_several(fleet, demand, kinds, sums, keep, room, need)

    # One GPU: every GPU with room is a candidate. Per kind, taking the job's VRAM from GPU g
    # changes the worker's usable VRAM by (after - before) on g while the worker still hosts
    # the kind; a kind hosted by exactly as many GPUs as it needs is lost with one of them.
    candidate = room[sums.gpus]
    gpus, slot = sums.gpus[candidate], sums.slot[candidate]
    before_frac = np.maximum(fleet.vram_free[gpus], 0) / fleet.vram_total[gpus]
    after_free = fleet.vram_free[gpus] - need[gpus]
    after_frac = np.maximum(after_free, 0) / fleet.vram_total[gpus]
    fitting_after = kinds.fitting(fleet, gpus, after_free, fleet.jobs[gpus] + 1)
    kept = sums.host & keep
    edge = kept & (sums.hosting == kinds.gpus)
    gained = -lost[slot]
    # Per worker and kind: the weight of kept kinds, of edge kinds, and edge kinds' usable VRAM
    # times their weight; summed over each group's first r kinds below.
    terms = np.empty((3, len(sums.workers), len(weight)))
    np.multiply(kept, weight, out=terms[0])
    np.multiply(edge, weight, out=terms[1])
    np.multiply(terms[1], sums.usable, out=terms[2])
    for group, fits, fits_after in zip(kinds.groups, sums.fitting, fitting_after, strict=True):
        prefix = np.zeros((3, len(sums.workers), group.stop - group.start + 1))
        np.cumsum(terms[:, :, group.start : group.stop], axis=2, out=prefix[:, :, 1:])
        (kept_w, edge_w, edge_u), (kept_w_after, edge_w_after, edge_u_after) = (
            prefix[:, slot, fits[candidate]],
            prefix[:, slot, fits_after],
        )
        gained += (
            after_frac * kept_w_after
            - before_frac * kept_w
            + before_frac * (edge_w - edge_w_after)
            - (edge_u - edge_u_after)
        )
    increase = (after_frac - before_frac) - gained
    return fleet.gpu_worker[gpus], gpus[:, None], increase, after_frac, sums.idle[slot]


def _evaluate_several(
    fleet: Fleet,
    demand: Demand,
    kinds: _MixArrays,
    sums: _WorkerSums,
    keep: np.ndarray,
    room: np.ndarray,
    need: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Several GPUs: per feasible worker, the GPUs with room that leave the least free VRAM
    (first GPUs first among equals); the worker's sums are recomputed with them taken."""
    candidate = room[sums.gpus]
    gpus, slot = sums.gpus[candidate], sums.slot[candidate]
    left = (fleet.vram_free[gpus] - need[gpus]) / fleet.vram_total[gpus]
    order = np.lexsort((gpus, left, slot))
    gpus, slot = gpus[order], slot[order]
    first = np.flatnonzero(np.r_[True, slot[1:] != slot[:-1]])
    rank = np.arange(len(gpus)) - np.repeat(first, np.diff(np.r_[first, len(gpus)]))
    picked = gpus[rank < demand.gpus].reshape(len(first), demand.gpus)
    rows = slot[first]

    hosting, usable, idle = sums.hosting[rows].copy(), sums.usable[rows].copy(), sums.idle[rows]
    leftover = np.zeros(len(rows))
    for column in range(demand.gpus):
        g = picked[:, column]
        before = np.maximum(fleet.vram_free[g], 0) / fleet.vram_total[g]
        after_free = fleet.vram_free[g] - need[g]
        after = np.maximum(after_free, 0) / fleet.vram_total[g]
        now = _kinds_fitting(fleet, kinds, g, fleet.vram_free[g], fleet.jobs[g])
        then = _kinds_fitting(fleet, kinds, g, after_free, fleet.jobs[g] + 1)
        hosting += then.astype(np.float64) - now
        usable += then * after[:, None] - now * before[:, None]
        idle = idle + (after - before)
        leftover += after
    host_after = (hosting >= kinds.gpus) & keep[rows]
    stranded_after = idle - (host_after * usable) @ kinds.weight
    stranded_before = sums.idle[rows] - (sums.host[rows] * sums.usable[rows]) @ kinds.weight
    increase = stranded_after - stranded_before
    return sums.workers[rows], picked, increase, leftover, sums.idle[rows]


def _kinds_fitting(
    fleet: Fleet, kinds: _MixArrays, gpus: np.ndarray, vram_free: np.ndarray, jobs: np.ndarray
) -> np.ndarray:
    """bool[len(gpus), K]: the kinds one more job of fits on each GPU (see `fitting`)."""
    fits = np.zeros((len(gpus), len(kinds.weight)), dtype=bool)
    for group, count in zip(kinds.groups, kinds.fitting(fleet, gpus, vram_free, jobs), strict=True):
        fits[:, group.start : group.stop] = np.arange(group.stop - group.start) < count[:, None]
    return fits


# --- how well a GPU's free VRAM will be filled ---------------------------------------------


def _fill_increase(
    fleet: Fleet, kinds: _MixArrays, demand: Demand, workers: np.ndarray, gpus: np.ndarray, need: np.ndarray
) -> np.ndarray:
    """Per candidate GPU `gpus` (of workers `workers`): the change (in GPUs) of its VRAM
    expected never to be filled when the job's `need` is taken from it (`fill.never_filled`),
    before with the one-GPU kinds its host can take now, after with those it can take once the
    job's CPU and memory are taken too. A GPU left without a job slot fills no further."""
    total = fleet.vram_total[gpus]
    before = SHARE_SCALE * np.maximum(fleet.vram_free[gpus], 0) // total
    after = SHARE_SCALE * np.maximum(fleet.vram_free[gpus] - need[gpus], 0) // total
    cpu, memory = fleet.cpu_free[workers], fleet.memory_free[workers]
    shares, which = room_shares(
        kinds.weight,
        kinds.cpu,
        kinds.memory,
        kinds.fill_index,
        len(kinds.fill_sizes),
        np.concatenate([cpu, cpu - demand.cpu]),
        np.concatenate([memory, memory - demand.memory]),
    )
    tables = tables_for(kinds.fill_sizes, fleet.classes)
    row = fleet.gpu_class[gpus]
    never = tables.never_filled(shares, which, np.concatenate([row, row]), np.concatenate([before, after]))
    never_before, never_after = never[: len(gpus)], never[len(gpus) :]
    never_after = np.where(fleet.jobs[gpus] + 1 >= fleet.max_jobs[gpus], after, never_after)
    return (never_after - never_before) / SHARE_SCALE


def _no_fit(fleet: Fleet, demand: Demand, host_ok: np.ndarray, room: np.ndarray, need: np.ndarray) -> NoFit:
    workers = len(fleet.worker_names)
    eligible_gpus = fleet.eligible[fleet.gpu_worker]
    largest = int(np.maximum(fleet.vram_free[eligible_gpus], 0).max(initial=0))
    needed = int(need.max(initial=0)) if demand.gpus else 0
    what = _describe(demand)
    if workers == 0:
        return NoFit(f"no workers to take {what}", needed, largest)
    counts: list[str] = []
    not_ready = int((~fleet.ready).sum())
    draining = int((fleet.ready & fleet.draining).sum())
    short_host = int((fleet.eligible & ~host_ok).sum())
    few = fleet.eligible & host_ok & (fleet.gpu_count < demand.gpus)
    allowed = fleet.allowed(demand.products)
    allowed_gpus = np.bincount(fleet.gpu_worker[allowed], minlength=workers)
    wrong_product = fleet.eligible & host_ok & ~few & (allowed_gpus < demand.gpus)
    short_gpu = fleet.eligible & host_ok & ~few & ~wrong_product
    for number, label in (
        (not_ready, "not ready"),
        (draining, "draining"),
        (short_host, "without the host CPU or memory"),
        (int(few.sum()), f"with fewer than {demand.gpus} GPUs"),
        (int(wrong_product.sum()), f"without {demand.gpus} GPUs of {sorted(demand.products)}"),
        (int(short_gpu.sum()), "with too few GPUs with that VRAM free and a job slot"),
    ):
        if number:
            counts.append(f"{number} {label}")
    return NoFit(
        f"no worker can take {what}: of {workers} workers, {', '.join(counts)}; "
        f"the most VRAM free on a GPU of a ready worker is {_gib(largest)}",
        needed,
        largest,
    )


def _describe(demand: Demand) -> str:
    if demand.gpus == 0:
        return f"a job with no GPU, {demand.cpu}m CPU and {_gib(demand.memory)} memory"
    each = (
        f"{demand.vram_share / SHARE_SCALE:.0%} of its VRAM"
        if demand.vram_share
        else f"{_gib(demand.vram)} VRAM"
    )
    return f"{demand.gpus} GPU(s) with {each} free each"


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


# --- after a placement ---------------------------------------------------------------------


def commit(fleet: Fleet, placement: Placement) -> Fleet:
    """The fleet after `placement` took its resources (for several placements in one round).

    Refuses a placement that no longer fits, so a stale one can never over-commit a GPU.
    """
    gpus = np.array(placement.gpu_indices, np.int64)
    vram = np.array(placement.vram, np.int64)
    w = placement.worker_index
    if fleet.worker_names[w] != placement.worker or any(
        fleet.gpu_worker[g] != w for g in placement.gpu_indices
    ):
        raise ValueError(f"placement on {placement.worker}: not a worker of this fleet")
    if (fleet.vram_free[gpus] < vram).any() or (fleet.jobs[gpus] >= fleet.max_jobs[gpus]).any():
        raise ValueError(f"placement on {placement.worker}: its GPUs no longer have the room")
    if fleet.cpu_free[w] < placement.cpu or fleet.memory_free[w] < placement.memory:
        raise ValueError(f"placement on {placement.worker}: its host no longer has the room")
    vram_free, jobs = fleet.vram_free.copy(), fleet.jobs.copy()
    vram_free[gpus] -= vram
    jobs[gpus] += 1
    cpu_free, memory_free = fleet.cpu_free.copy(), fleet.memory_free.copy()
    cpu_free[w] -= placement.cpu
    memory_free[w] -= placement.memory
    worker_state = fleet.worker_state.copy()
    own = slice(int(fleet.gpu_start[w]), int(fleet.gpu_start[w] + fleet.gpu_count[w]))
    worker_state[w] = fleet.states.of(
        int(cpu_free[w]),
        int(memory_free[w]),
        fleet.vram_total[own].tolist(),
        fleet.max_jobs[own].tolist(),
        [fleet.products[p] for p in fleet.gpu_product[own]],
        vram_free[own].tolist(),
        jobs[own].tolist(),
    )
    for array in (vram_free, jobs, cpu_free, memory_free, worker_state):
        array.flags.writeable = False
    return _evolve(
        fleet,
        cpu_free=cpu_free,
        memory_free=memory_free,
        vram_free=vram_free,
        jobs=jobs,
        worker_state=worker_state,
    )
