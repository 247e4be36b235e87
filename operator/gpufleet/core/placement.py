"""Where a job runs: the worker and GPU(s) that keep the fleet best able to take what comes next.

The rule, applied in this order (docs/placement.md says it for users):

1. **Fit.** Only workers that are ready and not draining, whose host has the CPU and memory the
   job asks for (where the worker reports them), and that have ``gpus`` GPUs each with an
   allowed product, the job's VRAM free for admission and fewer jobs than ``max_jobs``.
2. **Model locality** (``prefer_model``). A GPU where the job's model is not resident (nor
   loading) must also hold the model's VRAM (``Job.model_vram``), and may count the VRAM of
   its idle models for it (``Gpu.idle_models``: the ones the worker's cache would evict); the
   fit above is checked that way. Of the GPUs that fit, only those of the best tier are
   considered: the model resident on the GPU, then its files on the worker's disk, then cold
   (downloaded, then loaded). When no GPU holding the model has room now but some hold it,
   the job waits for one of those warm copies unless the model's queue is longer than they
   take soon (``warm_queue_per_copy`` jobs queued ahead per warm copy, ``Job.queue_ahead``):
   a second warm copy is loaded only when the queue needs it.
3. **Fragmentation.** The choice that least increases the fleet's *stranded* VRAM: free VRAM
   that the jobs which typically arrive could not use. The typical jobs are a decayed
   histogram of recent demands (`DemandMix`) that the caller updates with `observe`. For one
   kind of job, a worker strands all its free VRAM if it cannot host that kind (too few GPUs
   with room, or too little CPU or memory on the host), otherwise the free VRAM on the GPUs
   too small for it; only GPUs of products the kind may use count for it. Stranded VRAM is
   counted in GPUs (free VRAM over each GPU's total) and averaged over the kinds by how often
   each arrives. Where kinds are restricted to products, the VRAM the job takes is added,
   weighted by how contested its GPU's product is (`SCARCE_WEIGHT`, `_contention`): how much
   more the kinds that may use the product ask of its free VRAM than of the fleet's, so a job
   that could go elsewhere leaves a scarce product to the jobs that can only use it. For a
   one-GPU job, the change in the chosen GPU's VRAM expected *never* to be filled is added
   (`FILL_WEIGHT`): were the one-GPU jobs from the mix that its host can still take (and that
   may use its product) to keep landing on it, what would stay free (`fill.never_filled`).
   This looks past the next job: of two holes both usable now, it prefers leaving the one
   that typical jobs fill exactly. Scores that differ by less
   than `STRANDED_TIE` (1/25 of a GPU) are ties: the measure is an estimate, and below that
   the next keys pack better.
4. **Best fit.** The least free VRAM left on the chosen GPUs, again as a fraction of each GPU.
5. **Packing.** The worker with the least free VRAM, so that emptier workers stay whole.
6. **Order.** The first worker, then the first GPU, in the order the fleet lists them.

Everything here is a pure function of frozen values; there is no randomness, so the same
fleet, job and mix always give the same placement. Arrays inside `Fleet` are read-only. The
loops over the fleet's workers and GPUs are compiled (`gpufleet.core.compiled`); `warm_up`
compiles them ahead of the first decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, TypeVar, get_args

import numpy as np

from gpufleet.core.compiled import compiled, disk_cached
from gpufleet.core.fill import SHARE_SCALE, Size, room_shares, tables_for
from gpufleet_worker.modelcache import CachedModel, choose_evictions
from gpufleet_worker.protocol import ModelLoadSource

UNTRACKED = 2**62  # host CPU / memory of a worker that does not report them: never short
DEFAULT_HALF_LIFE = 1000.0  # jobs after which a demand weighs half as much in the mix
DEFAULT_MAX_KINDS = 64  # distinct demands the mix keeps (the lightest are dropped)
STRANDED_TIE = 0.04  # scores (in GPUs) closer than this are ties
FILL_WEIGHT = 1.0  # weight of the change in expected never-filled VRAM next to stranded VRAM
SCARCE_WEIGHT = 1.0  # weight of contested VRAM taken next to stranded VRAM
# Jobs queued for a model per busy warm copy before another copy is loaded: a load (tens of
# seconds for a diffusion checkpoint) costs about as much as four typical jobs (bench/models).
WARM_QUEUE_PER_COPY = 4
# Model locality tiers, best first: resident on the GPU, files on the worker's disk, downloaded.
MODEL_SOURCES: tuple[ModelLoadSource, ...] = get_args(ModelLoadSource)
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
    models: frozenset[str] = frozenset()  # models resident (or loading) on it
    # Resident models the worker may evict for a load (idle, not pinned) and their VRAM bytes,
    # least recently used first: the order the worker's cache evicts them in.
    idle_models: tuple[tuple[str, int], ...] = ()

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
        for model, size in self.idle_models:
            if model not in self.models or size < 0:
                raise ValueError(
                    f"gpu {self.uuid}: idle_models must be resident models with sizes >= 0, "
                    f"got {model}={size}"
                )
        if self.vram_free + self.evictable > self.vram_total:
            raise ValueError(
                f"gpu {self.uuid}: vram_free plus idle models' VRAM ({self.vram_free + self.evictable}) "
                f"must not exceed vram_total ({self.vram_total})"
            )

    @property
    def evictable(self) -> int:
        """Bytes a load may free by evicting idle models."""
        return sum(size for _, size in self.idle_models)


@dataclass(frozen=True)
class Worker:
    """A worker pod and its GPUs. ``cpu_free`` / ``memory_free`` are optional host limits."""

    name: str
    gpus: tuple[Gpu, ...]
    on_disk: frozenset[str] = frozenset()  # models whose files are local: loading needs no download
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
    """A job to place: its demand, the model it runs and the VRAM (per GPU) one resident copy
    of the model holds, and how many jobs for the same model wait ahead of it."""

    demand: Demand
    model: str | None = None
    model_vram: int = 0
    queue_ahead: int = 0

    def __post_init__(self) -> None:
        if self.model_vram < 0 or self.queue_ahead < 0:
            raise ValueError(
                f"job: model_vram and queue_ahead must be >= 0, got {self.model_vram}, {self.queue_ahead}"
            )
        if self.model_vram and self.model is None:
            raise ValueError("job: model_vram needs a model")


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
    group_start: np.ndarray  # int64[groups]
    group_stop: np.ndarray  # int64[groups]
    group_share: np.ndarray  # bool[groups]
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
            group_start=np.array([group.start for group in groups], np.int64),
            group_stop=np.array([group.stop for group in groups], np.int64),
            group_share=np.array([group.share for group in groups], np.bool_),
            fill_sizes=tuple(sizes),
            fill_index=np.array(fill_index, np.int64),
        )

    def with_kind(self, position: int, weight: float, memory: float) -> _MixArrays:
        weights, memories = self.weight.copy(), self.memory.copy()
        weights[position], memories[position] = weight, memory
        return _evolve(self, weight=weights, memory=memories)


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
    """Numbers worker shapes (their GPUs' sizes, job limits and products, in order) and worker
    states (shape, host room and their GPUs' free VRAM and jobs): equal ones, equal numbers.
    Append-only, so fleets derived from one another by `commit` can share it and still compare
    their workers' numbers."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[tuple[int, int, str], ...], int] = {}
        self._states: dict[tuple[int, int, int, bytes, bytes], int] = {}

    def shape(self, gpus: Sequence[Gpu]) -> int:
        key = tuple((g.vram_total, g.max_jobs, g.product) for g in gpus)
        return self._shapes.setdefault(key, len(self._shapes))

    def state(
        self, shape: int, cpu_free: int, memory_free: int, vram_free: np.ndarray, jobs: np.ndarray
    ) -> int:
        """The number of a worker's state; `vram_free` and `jobs` are its GPUs' (int64)."""
        key = (shape, cpu_free, memory_free, vram_free.tobytes(), jobs.tobytes())
        return self._states.setdefault(key, len(self._states))


@dataclass(frozen=True, eq=False)
class Fleet:
    """The workers' GPUs as arrays, for fast decisions. Build with `Fleet.of(workers)`.

    A worker's GPUs are contiguous: GPU ``i`` belongs to worker ``gpu_worker[i]``.
    """

    worker_names: tuple[str, ...]
    worker_disk: tuple[frozenset[str], ...]  # per worker: models whose files are local
    gpu_uuids: tuple[str, ...]
    gpu_models: tuple[frozenset[str], ...]  # per GPU: models resident or loading
    gpu_idle: tuple[tuple[tuple[str, int], ...], ...]  # per GPU: `Gpu.idle_models`
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
    evictable: np.ndarray  # int64[G] bytes: VRAM of the GPU's idle models
    ready: np.ndarray = field(repr=False)  # bool[W]
    draining: np.ndarray = field(repr=False)  # bool[W]
    gpu_start: np.ndarray = field(repr=False)  # int64[W]: index of each worker's first GPU
    worker_shape: np.ndarray = field(repr=False)  # int64[W]: equal for the same GPUs, in order
    # int64[W]: equal numbers for workers whose placements are interchangeable: the same
    # shape and host room, and their GPUs in the same states.
    worker_state: np.ndarray = field(repr=False)
    states: _StateIds = field(repr=False)  # gives those numbers; shared by commits
    gpu_class: np.ndarray = field(repr=False)  # int64[G]: index into `classes`
    classes: tuple[tuple[int, str], ...] = field(repr=False)  # distinct (vram_total, product)
    # `product_masks` per tuple of product sets asked for; the products never change, so fleets
    # derived from one another share it.
    masks: dict[tuple[frozenset[str], ...], np.ndarray] = field(repr=False)

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
        cpu_free = _readonly([UNTRACKED if w.cpu_free is None else w.cpu_free for w in workers], np.int64)
        memory_free = _readonly(
            [UNTRACKED if w.memory_free is None else w.memory_free for w in workers], np.int64
        )
        vram_free = _readonly([g.vram_free for g in gpus], np.int64)
        jobs = _readonly([g.jobs for g in gpus], np.int64)
        states = _StateIds()
        shape = _readonly([states.shape(w.gpus) for w in workers], np.int64)
        worker_state = [
            states.state(
                int(shape[i]),
                int(cpu_free[i]),
                int(memory_free[i]),
                vram_free[start[i] : start[i] + count[i]],
                jobs[start[i] : start[i] + count[i]],
            )
            for i in range(len(workers))
        ]
        return cls(
            worker_names=tuple(names),
            worker_disk=tuple(w.on_disk for w in workers),
            gpu_uuids=tuple(uuids),
            gpu_models=tuple(g.models for g in gpus),
            gpu_idle=tuple(g.idle_models for g in gpus),
            products=products,
            eligible=_readonly(ready & ~draining, np.bool_),
            cpu_free=cpu_free,
            memory_free=memory_free,
            gpu_count=_readonly([len(w.gpus) for w in workers], np.int64),
            gpu_worker=_readonly([i for i, w in enumerate(workers) for _ in w.gpus], np.int64),
            gpu_product=_readonly([product_index[g.product] for g in gpus], np.int64),
            vram_total=_readonly([g.vram_total for g in gpus], np.int64),
            vram_free=vram_free,
            jobs=jobs,
            max_jobs=_readonly([g.max_jobs for g in gpus], np.int64),
            evictable=_readonly([g.evictable for g in gpus], np.int64),
            ready=ready,
            draining=draining,
            gpu_start=_readonly(start, np.int64),
            worker_shape=shape,
            worker_state=_readonly(worker_state, np.int64),
            states=states,
            gpu_class=_readonly([class_index[g.vram_total, g.product] for g in gpus], np.int64),
            classes=classes,
            masks={},
        )

    def product_masks(self, asked: tuple[frozenset[str], ...]) -> np.ndarray:
        """bool[len(asked), len(self.products)]: per set of products asked for, the fleet's
        products in it (all when it is empty)."""
        masks = self.masks.get(asked)
        if masks is None:
            masks = _readonly(
                [[not products or p in products for p in self.products] for products in asked], np.bool_
            ).reshape(len(asked), len(self.products))
            self.masks[asked] = masks
        return masks

    def allowed(self, products: frozenset[str]) -> np.ndarray:
        """bool[G]: GPUs whose product is in `products` (all GPUs when it is empty)."""
        return self.product_masks((products,))[0, self.gpu_product]


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where the job goes and what it reserves there."""

    worker: str
    gpus: tuple[str, ...]  # uuids
    vram: tuple[int, ...]  # bytes reserved on each of `gpus`
    cpu: int  # milli-CPU taken on the host
    memory: int  # bytes taken on the host
    holds_model: bool  # the job's model is resident (or loading) on the chosen GPUs
    stranded_increase: float  # GPUs' worth of VRAM the typical jobs can no longer use
    fill_increase: float  # GPUs' worth of VRAM more expected never to be filled (one-GPU jobs)
    scarce_use: float  # VRAM taken (in GPUs) weighted by how contested its GPU's product is
    worker_index: int  # position of the worker in the fleet
    gpu_indices: tuple[int, ...]  # positions of the GPUs in the fleet
    model: str | None = None
    # Where the model comes from (the worker protocol's ModelLoad.source); None: no model.
    model_source: ModelLoadSource | None = None
    model_vram: tuple[int, ...] = ()  # bytes the model's load takes on each of `gpus` (0: resident)


@dataclass(frozen=True)
class NoFit:
    """No worker can take the job now; `reason` says why, with the numbers."""

    reason: str
    needed_vram: int  # bytes per GPU (the largest, for a share of differently sized GPUs)
    largest_free_vram: int  # the most VRAM free on any GPU of a ready, non-draining worker
    # GPUs (uuids) holding the job's model that it waits for, though a cold GPU has room.
    waits_for_warm: tuple[str, ...] = ()


# --- placing -------------------------------------------------------------------------------


def place(
    fleet: Fleet,
    job: Job,
    mix: DemandMix | None = None,
    *,
    prefer_model: bool = True,
    warm_queue_per_copy: int = WARM_QUEUE_PER_COPY,
) -> Placement | NoFit:
    """The best placement for `job` by the module's rule, or why there is none.

    Without a mix (or one without GPU jobs) no free VRAM counts as usable, so the job goes
    where it takes the largest fraction of a GPU, then by best fit and packing.
    """
    demand = job.demand
    tier = None
    if job.model is not None and demand.gpus:
        # The fleet as this job sees it: where its model is not resident, the model's VRAM is
        # taken first, from free VRAM and then from idle models.
        resident = np.fromiter((job.model in m for m in fleet.gpu_models), bool, len(fleet.gpu_models))
        on_disk = np.fromiter((job.model in m for m in fleet.worker_disk), bool, len(fleet.worker_disk))
        # Tiers (`_TIERS`): 0 resident; 1-2 files on disk; 3-4 cold; the even ones evict.
        tier = np.where(resident, 0, np.where(on_disk[fleet.gpu_worker], 1, 3)).astype(np.int64)
        if job.model_vram:
            loaded = fleet.vram_free + fleet.evictable - job.model_vram
            fleet = _evolve(fleet, vram_free=_readonly(np.where(resident, fleet.vram_free, loaded), np.int64))
    need, room, feasible = _scan(
        fleet.vram_total,
        fleet.vram_free,
        fleet.jobs,
        fleet.max_jobs,
        fleet.gpu_product,
        fleet.gpu_worker,
        fleet.cpu_free,
        fleet.memory_free,
        fleet.eligible,
        demand.vram_share,
        demand.vram,
        fleet.product_masks((demand.products,))[0],
        demand.cpu,
        demand.memory,
        demand.gpus,
    )
    if not feasible.any():
        return _no_fit(fleet, demand, need, job)
    if tier is not None:
        # A cold GPU that must evict idle models ranks after one that need not (the next tier).
        if job.model_vram:
            tier = tier + ((tier > 0) & (fleet.vram_free - fleet.evictable < need))
        if prefer_model:
            best_tier, room, feasible = _best_tier(fleet, tier, room, feasible, demand.gpus)
            warm = np.flatnonzero(
                (tier == 0) & fleet.eligible[fleet.gpu_worker] & fleet.allowed(demand.products)
            )
            busy = not (room & (tier == 0)).any()  # no warm GPU could be one of the job's now
            if best_tier > 0 and len(warm) and busy and job.queue_ahead < warm_queue_per_copy * len(warm):
                return _waits_for_warm(fleet, job, need, warm, warm_queue_per_copy)
        fleet = _evolve(fleet, worker_state=_refined_states(fleet, room, tier))

    kinds = mix._arrays if mix is not None else _MixArrays.of(())
    workers, picked, increase, leftover, idle = _candidates(
        fleet.vram_total,
        fleet.vram_free,
        fleet.jobs,
        fleet.max_jobs,
        fleet.gpu_product,
        fleet.gpu_start,
        fleet.gpu_count,
        fleet.cpu_free,
        fleet.memory_free,
        fleet.worker_state,
        feasible,
        room,
        need,
        demand.gpus,
        demand.cpu,
        demand.memory,
        kinds.gpus,
        kinds.threshold,
        kinds.cpu,
        kinds.memory,
        kinds.weight,
        kinds.group_start,
        kinds.group_stop,
        kinds.group_share,
        fleet.product_masks(tuple(group.products for group in kinds.groups)),
    )
    fill = np.zeros(len(workers))
    if demand.gpus == 1:
        fill = _fill_increase(fleet, kinds, demand, workers, picked[:, 0], need)
    scarce = _scarce_use(fleet, kinds, picked, need)
    best = _best(increase + FILL_WEIGHT * fill + SCARCE_WEIGHT * scarce, leftover, idle)
    worker = int(workers[best])
    chosen = tuple(int(g) for g in picked[best])
    tiers = [0] * len(chosen) if tier is None else [int(tier[g]) for g in chosen]
    return Placement(
        worker=fleet.worker_names[worker],
        gpus=tuple(fleet.gpu_uuids[g] for g in chosen),
        vram=tuple(int(need[g]) for g in chosen),
        cpu=demand.cpu,
        memory=demand.memory,
        holds_model=tier is not None and not any(tiers),
        stranded_increase=float(increase[best]),
        fill_increase=float(fill[best]),
        scarce_use=float(scarce[best]),
        worker_index=worker,
        gpu_indices=chosen,
        model=job.model,
        model_source=None if tier is None else MODEL_SOURCES[(max(tiers, default=0) + 1) // 2],
        model_vram=tuple(job.model_vram if t else 0 for t in tiers) if tier is not None else (),
    )


def _best_tier(
    fleet: Fleet, tier: np.ndarray, room: np.ndarray, feasible: np.ndarray, gpus: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """Rule 2: the best model tier at which some feasible worker has `gpus` GPUs with room,
    and the room and feasible workers restricted to GPUs of that tier or better."""
    for best in range(int(tier[room].max(initial=0)) + 1):
        within = room & (tier <= best)
        hosts = feasible & (np.bincount(fleet.gpu_worker[within], minlength=len(feasible)) >= gpus)
        if hosts.any():
            return best, within, hosts
    raise AssertionError("a feasible worker has room at its worst tier")


def _waits_for_warm(fleet: Fleet, job: Job, need: np.ndarray, warm: np.ndarray, per_copy: int) -> NoFit:
    copies = len(warm)
    return NoFit(
        f"waiting for a warm copy of model {job.model}: resident on {copies} GPU(s) with no room now "
        f"and {job.queue_ahead} job(s) for it queued ahead; another copy is loaded once "
        f"{per_copy * copies} wait",
        int(need.max(initial=0)),
        int(fleet.vram_free[fleet.eligible[fleet.gpu_worker]].max(initial=0)),
        waits_for_warm=tuple(fleet.gpu_uuids[g] for g in warm),
    )


def _refined_states(fleet: Fleet, room: np.ndarray, tier: np.ndarray) -> np.ndarray:
    """`Fleet.worker_state` for one model's job: workers are interchangeable only if their GPUs
    also have the same VRAM free for it (`place` counts the model's), room and tier."""
    width = int(fleet.gpu_count.max(initial=0))
    columns = np.arange(width)
    present = columns[None, :] < fleet.gpu_count[:, None]
    index = np.where(present, fleet.gpu_start[:, None] + columns[None, :], 0)
    rows = np.concatenate(
        [
            fleet.worker_state[:, None],
            np.where(present, fleet.vram_free[index], -1),
            np.where(present, room[index], -1),
            np.where(present, tier[index], -1),
        ],
        axis=1,
    )
    _, states = np.unique(rows, axis=0, return_inverse=True)
    return _readonly(states.reshape(-1), np.int64)


@compiled
def score_bin(score):
    """Which `STRANDED_TIE`-wide bin each score falls in. Scores are first snapped to `_NOISE`,
    so two sums of the same terms in another order land in the same bin even on its edge."""
    return np.rint(np.rint(score / _NOISE) / _NOISE_PER_TIE)


@compiled
def _best(score, leftover, idle):
    """Rules 3 to 6: the candidate with the lowest score bin, then the least free VRAM left on
    its GPUs, then on its worker (all snapped to `_NOISE`); the first among equals."""
    best, best_key = -1, (0.0, 0.0, 0.0)
    for c in range(len(score)):
        key = (score_bin(score[c]), np.rint(leftover[c] / _NOISE), np.rint(idle[c] / _NOISE))
        if best < 0 or key < best_key:
            best, best_key = c, key
    return best


def warm_up() -> None:
    """Compile the placer's loops now, or load them from the disk cache (`compiled`), so that
    no real decision waits for it: a few placements on a one-worker fleet of two products,
    with a mix in which one kind is restricted to one of them."""
    gpus = tuple(Gpu(f"warm-up/{i}", f"warm-up/{i}", 2**30, 2**30, max_jobs=2) for i in range(2))
    fleet = Fleet.of([Worker("warm-up", gpus, cpu_free=1000, memory_free=2**30)])
    mix = observe(DemandMix(), Demand(vram_share=500))
    mix = observe(mix, Demand(vram_share=500, products=frozenset({"warm-up/0"})))
    for demand in (
        Demand(vram_share=500, cpu=1),
        Demand(gpus=2, vram=1),
        Demand(gpus=0, cpu=1),
        Demand(vram=2**31),
    ):
        place(fleet, Job(demand), mix)


def warm_up_cached() -> bool:
    """Whether `warm_up` loads from a disk cache that another process can fill (`compiled`)."""
    return disk_cached(_scan)


# --- the candidates and their keys ----------------------------------------------------------


@compiled
def _scan(
    vram_total,
    vram_free,
    jobs,
    max_jobs,
    gpu_product,
    gpu_worker,
    cpu_free,
    memory_free,
    eligible,
    share,
    vram,
    product_ok,
    cpu,
    memory,
    gpus,
):
    """Rule 1 (fit) for every GPU and worker: (need[G]: bytes the job needs on each GPU,
    room[G]: the GPU could take it, feasible[W]: the worker could)."""
    host_ok = np.empty(len(eligible), np.bool_)
    for w in range(len(eligible)):
        host_ok[w] = eligible[w] and cpu_free[w] >= cpu and memory_free[w] >= memory
    need, room = np.empty(len(vram_total), np.int64), np.empty(len(vram_total), np.bool_)
    rooms = np.zeros(len(eligible), np.int64)
    for g in range(len(vram_total)):  # branch-free: every GPU is visited
        need[g] = vram_total[g] * share // SHARE_SCALE if share else vram
        room[g] = (
            host_ok[gpu_worker[g]]
            & (vram_free[g] >= need[g])
            & (jobs[g] < max_jobs[g])
            & product_ok[gpu_product[g]]
        )
        rooms[gpu_worker[g]] += room[g]
    feasible = np.empty(len(eligible), np.bool_)
    for w in range(len(eligible)):
        feasible[w] = host_ok[w] and rooms[w] >= gpus
    return need, room, feasible


@compiled
def _kinds_fitting(group, free, jobs, vram_total, max_jobs, allowed, layout):
    """How many kinds of `group` (a prefix: sorted by amount) one more job of fits on a GPU
    with `free` bytes free and `jobs` running. `layout`: the kinds' thresholds and the groups'
    starts, stops and share flags."""
    kind_threshold, group_start, group_stop, group_share = layout
    if jobs >= max_jobs or not allowed:
        return 0
    # For shares: the largest share s with floor(vram_total * s / 1000) <= free.
    room = (SHARE_SCALE * (free + 1) + vram_total - 1) // vram_total - 1 if group_share[group] else free
    low, high = group_start[group], group_stop[group]  # binary search: first kind above room
    while low < high:
        middle = (low + high) // 2
        if kind_threshold[middle] <= room:
            low = middle + 1
        else:
            high = middle
    return low - group_start[group]


@compiled
def _candidates(
    vram_total,
    vram_free,
    jobs,
    max_jobs,
    gpu_product,
    gpu_start,
    gpu_count,
    cpu_free,
    memory_free,
    worker_state,
    feasible,
    room,
    need,
    job_gpus,
    job_cpu,
    job_memory,
    kind_gpus,
    kind_threshold,
    kind_cpu,
    kind_memory,
    weight,
    group_start,
    group_stop,
    group_share,
    group_product_ok,
):
    """Rule 3's measure for each candidate placement on the first of each set of identical
    feasible workers (identical workers offer identical candidates and the earliest wins every
    tie). Returns, candidates in fleet order: (worker, GPUs [C, job_gpus], increase of stranded
    VRAM, free VRAM left on the chosen GPUs, free VRAM on the worker now), the last three in
    GPUs. Per kind, a worker's usable VRAM is the free VRAM of its GPUs that fit the kind,
    counted while the worker hosts the kind (enough such GPUs, and host CPU and memory)."""
    kinds, groups = len(weight), len(group_start)
    # Kinds weigh by their share of the jobs that use GPUs (CPU-only jobs use no free VRAM).
    gpu_weight = 0.0
    for k in range(kinds):
        gpu_weight += weight[k] if kind_gpus[k] > 0 else 0.0
    weight = weight.copy()
    for k in range(kinds):
        weight[k] = weight[k] / gpu_weight if kind_gpus[k] > 0 and gpu_weight > 0 else 0.0
    # A GPU's free VRAM is stranded only for the kinds that may use its product: per product,
    # the weight of those kinds (1 minus the others', so exactly 1 when no kind names products).
    product_weight = np.ones(group_product_ok.shape[1])
    for j in range(groups):
        for p in range(len(product_weight)):
            if not group_product_ok[j, p]:
                for k in range(group_start[j], group_stop[j]):
                    product_weight[p] -= weight[k]
    layout = (kind_threshold, group_start, group_stop, group_share)
    widest = max(gpu_count.max(), 1) if len(gpu_count) else 1
    # Per worker (reset after each): per kind, GPUs that fit it and their free VRAM (in GPUs);
    # per GPU, its free VRAM before and after the job (in GPUs) and, per group, how many of
    # the group's kinds it fits before and after; per group, the most any GPU fits now.
    # Kinds past `top` fit no GPU of the worker, so they are neither hosted nor visited.
    hosting, usable = np.zeros(kinds), np.zeros(kinds)
    host, keep = np.empty(kinds, np.bool_), np.empty(kinds, np.bool_)
    before, after = np.empty(widest), np.empty(widest)
    fits_now, fits_after = np.empty((widest, groups), np.int64), np.empty((widest, groups), np.int64)
    top = np.empty(groups, np.int64)
    # Per group, prefix sums over its kinds of kept weight, edge weight and edge usable VRAM.
    kept_w, edge_w, edge_u = np.empty(kinds + groups), np.empty(kinds + groups), np.empty(kinds + groups)
    most = len(vram_total) if job_gpus == 1 else len(gpu_start)
    out_worker = np.empty(most, np.int64)
    out_gpus = np.empty((most, job_gpus), np.int64)
    out_increase, out_leftover, out_idle = np.empty(most), np.empty(most), np.empty(most)
    seen = np.zeros(worker_state.max() + 1 if len(worker_state) else 1, np.bool_)
    count = 0
    for w in range(len(gpu_start)):
        if not feasible[w] or seen[worker_state[w]]:
            continue
        seen[worker_state[w]] = True
        first, n = gpu_start[w], gpu_count[w]
        for j in range(groups):
            top[j] = 0
        for i in range(n):
            g = first + i
            before[i] = max(vram_free[g], 0) / vram_total[g]
            after[i] = max(vram_free[g] - need[g], 0) / vram_total[g]
            for j in range(groups):
                allowed = group_product_ok[j, gpu_product[g]]
                fit = _kinds_fitting(j, vram_free[g], jobs[g], vram_total[g], max_jobs[g], allowed, layout)
                fits_now[i, j] = fit
                top[j] = max(top[j], fit)
                if fit:  # counted at the last kind it fits; summed down the group below
                    hosting[group_start[j] + fit - 1] += 1.0
                    usable[group_start[j] + fit - 1] += before[i]
                if room[g]:
                    fits_after[i, j] = _kinds_fitting(
                        j, vram_free[g] - need[g], jobs[g] + 1, vram_total[g], max_jobs[g], allowed, layout
                    )
        idle = 0.0
        for i in range(n):
            idle += before[i]
        # Kinds the worker hosts now, and those it still would with the job's CPU and memory taken.
        lost = 0.0
        for j in range(groups):
            for k in range(group_start[j] + top[j] - 1, group_start[j] - 1, -1):
                if k + 1 < group_start[j] + top[j]:
                    hosting[k] += hosting[k + 1]
                    usable[k] += usable[k + 1]
                host[k] = (
                    hosting[k] >= kind_gpus[k]
                    and cpu_free[w] >= kind_cpu[k]
                    and memory_free[w] >= kind_memory[k]
                )
                keep[k] = (
                    cpu_free[w] - job_cpu >= kind_cpu[k] and memory_free[w] - job_memory >= kind_memory[k]
                )
                if host[k] and not keep[k]:
                    lost += usable[k] * weight[k]

        if job_gpus == 0:
            out_worker[count], out_increase[count], out_leftover[count], out_idle[count] = w, lost, 0.0, idle
            count += 1
        elif job_gpus == 1:
            # Taking the job's VRAM from GPU g changes the worker's usable VRAM by (after - before)
            # on g for each kind it keeps hosting; a kind hosted by exactly as many GPUs as it
            # needs (an edge kind) is lost with g.
            for j in range(groups):
                at = group_start[j] + j
                kept_w[at] = edge_w[at] = edge_u[at] = 0.0
                for k in range(group_start[j], group_start[j] + top[j]):
                    kept = host[k] and keep[k]
                    edge = kept and hosting[k] == kind_gpus[k]
                    at += 1
                    kept_w[at] = kept_w[at - 1] + (weight[k] if kept else 0.0)
                    edge_w[at] = edge_w[at - 1] + (weight[k] if edge else 0.0)
                    edge_u[at] = edge_u[at - 1] + (weight[k] * usable[k] if edge else 0.0)
            for i in range(n):
                if not room[first + i]:
                    continue
                taken = (after[i] - before[i]) * product_weight[gpu_product[first + i]]
                gained = -lost
                for j in range(groups):
                    b, a = group_start[j] + j + fits_now[i, j], group_start[j] + j + fits_after[i, j]
                    gained += (
                        after[i] * kept_w[a]
                        - before[i] * kept_w[b]
                        + before[i] * (edge_w[b] - edge_w[a])
                        - (edge_u[b] - edge_u[a])
                    )
                out_worker[count], out_gpus[count, 0] = w, first + i
                out_increase[count] = taken - gained
                out_leftover[count], out_idle[count] = after[i], idle
                count += 1
        else:
            # Several GPUs: those with room that leave the least free VRAM (first GPUs first
            # among equals); the worker's sums are recomputed with them taken.
            chosen = out_gpus[count]
            taken = np.zeros(n, np.bool_)
            for t in range(job_gpus):
                best = -1
                for i in range(n):
                    if room[first + i] and not taken[i] and (best < 0 or after[i] < after[best]):
                        best = i
                chosen[t], taken[best] = first + best, True
            stranded_before, leftover = 0.0, 0.0
            for i in range(n):
                stranded_before += before[i] * product_weight[gpu_product[first + i]]
            stranded_after = stranded_before
            for j in range(groups):
                for k in range(group_start[j], group_start[j] + top[j]):
                    if host[k]:
                        stranded_before -= usable[k] * weight[k]
            for g in chosen:
                i = g - first
                stranded_after += (after[i] - before[i]) * product_weight[gpu_product[g]]
                leftover += after[i]
                for j in range(groups):
                    for k in range(group_start[j] + fits_after[i, j], group_start[j] + fits_now[i, j]):
                        hosting[k] -= 1.0
                        usable[k] -= before[i]
                    for k in range(group_start[j], group_start[j] + fits_after[i, j]):
                        usable[k] += after[i] - before[i]
            for j in range(groups):
                for k in range(group_start[j], group_start[j] + top[j]):
                    if hosting[k] >= kind_gpus[k] and keep[k]:
                        stranded_after -= usable[k] * weight[k]
            out_worker[count] = w
            out_increase[count] = stranded_after - stranded_before
            out_leftover[count], out_idle[count] = leftover, idle
            count += 1
        for j in range(groups):
            for k in range(group_start[j], group_start[j] + top[j]):
                hosting[k] = usable[k] = 0.0
    return (
        out_worker[:count],
        out_gpus[:count],
        out_increase[:count],
        out_leftover[:count],
        out_idle[:count],
    )


# --- how contested each GPU product's free VRAM is -------------------------------------------


def _scarce_use(fleet: Fleet, kinds: _MixArrays, picked: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Per candidate (its GPUs `picked`): the VRAM it takes, in GPUs, each GPU's weighted by its
    product's `_contention`. All zeros when no kind of the mix is restricted to products."""
    if not picked.shape[1] or all(not group.products for group in kinds.groups):
        return np.zeros(len(picked))
    contention = _contention(
        fleet.vram_free,
        fleet.vram_total,
        fleet.jobs,
        fleet.max_jobs,
        fleet.gpu_worker,
        fleet.eligible,
        fleet.gpu_product,
        kinds.gpus,
        kinds.weight,
        kinds.group_start,
        kinds.group_stop,
        fleet.product_masks(tuple(group.products for group in kinds.groups)),
    )
    return _weighted_take(fleet.vram_free, fleet.vram_total, fleet.gpu_product, picked, need, contention)


@compiled
def _contention(
    vram_free,
    vram_total,
    jobs,
    max_jobs,
    gpu_worker,
    eligible,
    gpu_product,
    kind_gpus,
    weight,
    group_start,
    group_stop,
    group_product_ok,
):
    """float64[products]: how much more the jobs that may use each product ask of its free VRAM
    than of the fleet's: the sum, over the GPU kinds restricted to products that include it, of
    the kind's share of GPU jobs times (the fleet's free VRAM over the free VRAM of the products
    the kind may use, minus 1). A kind that may use only a small part of what is free presses
    hard on that part; an unrestricted kind presses on nothing in particular and counts 0.
    Free VRAM is counted in GPUs, on GPUs of ready, non-draining workers with a job slot."""
    products = group_product_ok.shape[1]
    free = np.zeros(products)
    for g in range(len(vram_free)):
        if eligible[gpu_worker[g]] and jobs[g] < max_jobs[g]:
            free[gpu_product[g]] += max(vram_free[g], 0) / vram_total[g]
    fleet_free = free.sum()
    gpu_weight = 0.0
    for k in range(len(weight)):
        gpu_weight += weight[k] if kind_gpus[k] > 0 else 0.0
    contention = np.zeros(products)
    for j in range(len(group_start)):
        usable = 0.0
        restricted = False
        for p in range(products):
            if group_product_ok[j, p]:
                usable += free[p]
            else:
                restricted = True
        if not restricted or usable <= 0.0:
            continue
        share = 0.0
        for k in range(group_start[j], group_stop[j]):
            share += weight[k] / gpu_weight if kind_gpus[k] > 0 else 0.0
        for p in range(products):
            if group_product_ok[j, p]:
                contention[p] += share * (fleet_free / usable - 1.0)
    return contention


@compiled
def _weighted_take(vram_free, vram_total, gpu_product, picked, need, contention):
    """Per candidate: the VRAM (in GPUs) its GPUs `picked` lose, each times its product's
    `contention`."""
    out = np.zeros(len(picked))
    for c in range(len(picked)):
        for g in picked[c]:
            taken = max(vram_free[g], 0) - max(vram_free[g] - need[g], 0)
            out[c] += taken / vram_total[g] * contention[gpu_product[g]]
    return out


# --- how well a GPU's free VRAM will be filled ---------------------------------------------


def _fill_increase(
    fleet: Fleet, kinds: _MixArrays, demand: Demand, workers: np.ndarray, gpus: np.ndarray, need: np.ndarray
) -> np.ndarray:
    """Per candidate GPU `gpus` (of workers `workers`): the change (in GPUs) of its VRAM
    expected never to be filled when the job's `need` is taken from it (`fill.never_filled`),
    before with the one-GPU kinds its host can take now, after with those it can take once the
    job's CPU and memory are taken too. A GPU left without a job slot fills no further."""
    room_cpu, room_memory, room_of = _host_rooms(
        workers, fleet.cpu_free, fleet.memory_free, demand.cpu, demand.memory
    )
    shares, room_row = room_shares(
        kinds.weight, kinds.cpu, kinds.memory, kinds.fill_index, len(kinds.fill_sizes), room_cpu, room_memory
    )
    which, gpu_class, free, full = _fill_points(
        fleet.vram_total,
        fleet.vram_free,
        fleet.jobs,
        fleet.max_jobs,
        fleet.gpu_class,
        gpus,
        need,
        room_of,
        room_row,
    )
    never = tables_for(kinds.fill_sizes, fleet.classes).never_filled(shares, which, gpu_class, free)
    before, after = never[: len(gpus)], never[len(gpus) :]
    return (np.where(full, free[len(gpus) :], after) - before) / SHARE_SCALE


@compiled
def _host_rooms(workers, cpu_free, memory_free, job_cpu, job_memory):
    """The host rooms `_fill_increase` needs: per worker of the candidates (consecutive in
    `workers`), its room before the job, then after it; and each candidate's first room."""
    room_cpu, room_memory = np.empty(2 * len(workers), np.int64), np.empty(2 * len(workers), np.int64)
    room_of = np.empty(len(workers), np.int64)
    rooms = 0
    for c in range(len(workers)):
        w = workers[c]
        if c == 0 or w != workers[c - 1]:
            room_cpu[rooms], room_cpu[rooms + 1] = cpu_free[w], cpu_free[w] - job_cpu
            room_memory[rooms], room_memory[rooms + 1] = memory_free[w], memory_free[w] - job_memory
            rooms += 2
        room_of[c] = rooms - 2
    return room_cpu[:rooms], room_memory[:rooms], room_of


@compiled
def _fill_points(vram_total, vram_free, jobs, max_jobs, gpu_class, gpus, need, room_of, room_row):
    """`_fill_increase`'s points: each candidate GPU before the job, then each after it, with
    its row of shares (`room_row` of its host's room), its class and its free thousandths; and
    which GPUs the job leaves without a job slot."""
    count = len(gpus)
    which, points_class = np.empty(2 * count, np.int64), np.empty(2 * count, np.int64)
    free, full = np.empty(2 * count, np.int64), np.empty(count, np.bool_)
    for c in range(count):
        g = gpus[c]
        which[c], which[count + c] = room_row[room_of[c]], room_row[room_of[c] + 1]
        points_class[c] = points_class[count + c] = gpu_class[g]
        free[c] = SHARE_SCALE * max(vram_free[g], 0) // vram_total[g]
        free[count + c] = SHARE_SCALE * max(vram_free[g] - need[g], 0) // vram_total[g]
        full[c] = jobs[g] + 1 >= max_jobs[g]
    return which, points_class, free, full


def _no_fit(fleet: Fleet, demand: Demand, need: np.ndarray, job: Job) -> NoFit:
    workers = len(fleet.worker_names)
    largest, not_ready, draining, short_host, few, wrong_product, short_gpu = _shortfalls(
        fleet.ready,
        fleet.draining,
        fleet.cpu_free,
        fleet.memory_free,
        fleet.gpu_start,
        fleet.gpu_count,
        fleet.gpu_product,
        fleet.vram_free,
        fleet.product_masks((demand.products,))[0],
        demand.cpu,
        demand.memory,
        demand.gpus,
    )
    needed = int(need.max(initial=0)) if demand.gpus else 0
    what = _describe(demand)
    if workers == 0:
        return NoFit(f"no workers to take {what}", needed, largest)
    counts: list[str] = []
    for number, label in (
        (not_ready, "not ready"),
        (draining, "draining"),
        (short_host, "without the host CPU or memory"),
        (few, f"with fewer than {demand.gpus} GPUs"),
        (wrong_product, f"without {demand.gpus} GPUs of {sorted(demand.products)}"),
        (short_gpu, "with too few GPUs with that VRAM free and a job slot"),
    ):
        if number:
            counts.append(f"{number} {label}")
    model = (
        f" (where model {job.model} is not resident, after loading its {_gib(job.model_vram)} "
        "in free VRAM or in place of idle models)"
        if job.model_vram and demand.gpus
        else ""
    )
    return NoFit(
        f"no worker can take {what}: of {workers} workers, {', '.join(counts)}; "
        f"the most VRAM free on a GPU of a ready worker is {_gib(largest)}{model}",
        needed,
        largest,
    )


@compiled
def _shortfalls(
    ready,
    draining,
    cpu_free,
    memory_free,
    gpu_start,
    gpu_count,
    gpu_product,
    vram_free,
    product_ok,
    cpu,
    memory,
    gpus,
):
    """Why no worker fits: (the most VRAM free on a GPU of a ready, non-draining worker, then
    how many workers are not ready, draining, short of host CPU or memory, with too few GPUs,
    with too few GPUs of an allowed product, and with too few GPUs with room)."""
    largest = not_ready = draining_count = short_host = few = wrong_product = short_gpu = 0
    for w in range(len(gpu_start)):
        if not ready[w]:
            not_ready += 1
            continue
        if draining[w]:
            draining_count += 1
            continue
        allowed = 0
        for g in range(gpu_start[w], gpu_start[w] + gpu_count[w]):
            largest = max(largest, vram_free[g])
            allowed += product_ok[gpu_product[g]]
        if cpu_free[w] < cpu or memory_free[w] < memory:
            short_host += 1
        elif gpu_count[w] < gpus:
            few += 1
        elif allowed < gpus:
            wrong_product += 1
        else:
            short_gpu += 1
    return largest, not_ready, draining_count, short_host, few, wrong_product, short_gpu


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
    w = placement.worker_index
    if fleet.worker_names[w] != placement.worker or any(
        fleet.gpu_worker[g] != w for g in placement.gpu_indices
    ):
        raise ValueError(f"placement on {placement.worker}: not a worker of this fleet")
    loads = placement.model_vram or (0,) * len(placement.gpu_indices)
    if any(
        fleet.vram_free[g] + (fleet.evictable[g] if load else 0) < vram + load
        or fleet.jobs[g] >= fleet.max_jobs[g]
        or (placement.model_source == MODEL_SOURCES[0] and placement.model not in fleet.gpu_models[g])
        for g, vram, load in zip(placement.gpu_indices, placement.vram, loads, strict=True)
    ):
        raise ValueError(f"placement on {placement.worker}: its GPUs no longer have the room")
    if fleet.cpu_free[w] < placement.cpu or fleet.memory_free[w] < placement.memory:
        raise ValueError(f"placement on {placement.worker}: its host no longer has the room")
    vram_free, jobs = fleet.vram_free.copy(), fleet.jobs.copy()
    for g, vram, load in zip(placement.gpu_indices, placement.vram, loads, strict=True):
        vram_free[g] -= vram + load
        jobs[g] += 1
    evictable, gpu_models, gpu_idle = fleet.evictable, fleet.gpu_models, fleet.gpu_idle
    if placement.model is not None and placement.gpu_indices:  # only then copied: fleets are large
        evictable, models, idles = evictable.copy(), list(gpu_models), list(gpu_idle)
        for g, vram, load in zip(placement.gpu_indices, placement.vram, loads, strict=True):
            # A load takes free VRAM first, then evicts idle models as the worker's cache
            # does; the job's model is in use now.
            idle = dict(idles[g])
            cached = [CachedModel(name, size, order) for order, (name, size) in enumerate(idles[g])]
            free = int(vram_free[g]) + vram + load
            for name in choose_evictions(cached, vram + load, free) or () if load else ():
                vram_free[g] += idle.pop(name)
                models[g] -= {name}
            models[g] |= {placement.model}
            idle.pop(placement.model, None)
            idles[g] = tuple(idle.items())
            evictable[g] = sum(idle.values())
        gpu_models, gpu_idle = tuple(models), tuple(idles)
    cpu_free, memory_free = fleet.cpu_free.copy(), fleet.memory_free.copy()
    cpu_free[w] -= placement.cpu
    memory_free[w] -= placement.memory
    worker_state = fleet.worker_state.copy()
    own = slice(fleet.gpu_start[w], fleet.gpu_start[w] + fleet.gpu_count[w])
    worker_state[w] = fleet.states.state(
        int(fleet.worker_shape[w]), int(cpu_free[w]), int(memory_free[w]), vram_free[own], jobs[own]
    )
    for array in (vram_free, jobs, evictable, cpu_free, memory_free, worker_state):
        array.flags.writeable = False
    return _evolve(
        fleet,
        cpu_free=cpu_free,
        memory_free=memory_free,
        vram_free=vram_free,
        jobs=jobs,
        evictable=evictable,
        gpu_models=gpu_models,
        gpu_idle=gpu_idle,
        worker_state=worker_state,
    )
