"""Which queued jobs go to which worker GPU this round: queue order, then the placer.

The workers' view is what their inventories reported, less what this round (and any
dispatch not yet visible in an inventory) has already reserved, so a round can never
over-commit a GPU. A job that does not fit now is skipped and smaller ones behind it may
go (backfill); aging in the queue order keeps skipped jobs from waiting forever. Each job
tells the placer how many jobs for its model still wait ahead of it this round, so a job
waits for a busy warm copy of its model until the queue for it needs another copy.

A job keeps away from the workers that lost an earlier attempt of it while another ready
worker could take it, even if that worker is busy now; when none could (a one-worker pool,
whose replacement pod keeps its name, or every worker lost an attempt) the avoided workers
are used rather than leaving the job queued for ever.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gpufleet.core import placement
from gpufleet.core.placement import Demand, DemandMix, Fleet, Job, NoFit, Placement, Worker


@dataclass(frozen=True)
class QueuedJob:
    key: str  # namespace/name
    model: str
    vram: int  # working VRAM per GPU, bytes
    model_vram: int = 0  # VRAM one resident copy of the model holds, per GPU
    gpus: int = 1
    products: frozenset[str] = frozenset()
    avoid: frozenset[str] = frozenset()  # workers that lost an earlier attempt of this job


@dataclass(frozen=True)
class Assignment:
    key: str
    placement: Placement


@dataclass(frozen=True)
class Plan:
    assignments: tuple[Assignment, ...]
    waiting: dict[str, NoFit]  # jobs that fit nowhere this round, and why


def plan(
    ordered: Sequence[QueuedJob],
    workers: Iterable[Worker],
    mix: DemandMix | None = None,
    *,
    warm_queue_per_copy: int = placement.WARM_QUEUE_PER_COPY,
) -> Plan:
    """Places ``ordered`` (already in queue order) onto ``workers``, first come first placed.

    ``mix`` is the pool's recent job mix (updated by the caller as jobs arrive);
    ``warm_queue_per_copy`` is the placer's (`placement.place`).
    """
    fleet = Fleet.of(workers)
    assignments: list[Assignment] = []
    waiting: dict[str, NoFit] = {}
    # A job that found no fit is the same as any later one with the same needs until the fleet
    # changes: remembered, so a queue of thousands behind a full fleet costs one try per shape.
    no_fit: dict[tuple, NoFit] = {}
    waiting_for: Counter[str] = Counter()  # per model, jobs ahead that were not placed
    for job in ordered:
        demand = Demand(gpus=job.gpus, vram=job.vram, products=job.products)
        shape = (demand, job.model, job.avoid)
        if shape in no_fit:
            waiting[job.key] = no_fit[shape]
            waiting_for[job.model] += 1
            continue
        view, avoided = _without_avoided(fleet, job, demand)
        result = placement.place(
            view,
            Job(demand, job.model, job.model_vram, queue_ahead=waiting_for[job.model]),
            mix,
            warm_queue_per_copy=warm_queue_per_copy,
        )
        if isinstance(result, NoFit):
            if avoided:
                result = dataclasses.replace(
                    result,
                    reason=f"{result.reason}; not on {', '.join(avoided)}, which lost an earlier attempt "
                    "of this job, while another worker could take it",
                )
            waiting[job.key] = result
            waiting_for[job.model] += 1
            if not result.waits_for_warm:  # the next job for the model may load another copy
                no_fit[shape] = result
            continue
        fleet = placement.commit(fleet, result)
        no_fit.clear()
        assignments.append(Assignment(job.key, result))
    return Plan(tuple(assignments), waiting)


def _without_avoided(fleet: Fleet, job: QueuedJob, demand: Demand) -> tuple[Fleet, list[str]]:
    """The fleet as ``job`` may use it, and the names of the eligible workers kept from it.

    Avoided workers stay out only while some other eligible worker could take the job were it
    idle (enough GPUs of an allowed product, each with the VRAM in total)."""
    names = np.array(fleet.worker_names, dtype=object)
    avoided = fleet.eligible & np.isin(names, list(job.avoid))
    if not avoided.any():
        return fleet, []
    big_enough = (
        (fleet.vram_total >= demand.vram_on(fleet.vram_total))
        & fleet.allowed(demand.products)
        & (fleet.eligible & ~avoided)[fleet.gpu_worker]
    )
    hosts = np.bincount(fleet.gpu_worker[big_enough], minlength=len(names)) >= demand.gpus
    if not hosts.any():
        return fleet, []
    eligible = fleet.eligible & ~avoided
    eligible.flags.writeable = False
    return dataclasses.replace(fleet, eligible=eligible), sorted(names[avoided])
