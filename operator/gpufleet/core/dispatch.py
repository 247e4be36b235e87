"""Which queued jobs go to which worker GPU this round: queue order, then the placer.

The workers' view is what their inventories reported, less what this round (and any
dispatch not yet visible in an inventory) has already reserved, so a round can never
over-commit a GPU. A job that does not fit now is skipped and smaller ones behind it may
go (backfill); aging in the queue order keeps skipped jobs from waiting forever.
"""

from __future__ import annotations

import dataclasses
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


def plan(ordered: Sequence[QueuedJob], workers: Iterable[Worker], mix: DemandMix | None = None) -> Plan:
    """Places ``ordered`` (already in queue order) onto ``workers``, first come first placed.

    ``mix`` is the pool's recent job mix (updated by the caller as jobs arrive).
    """
    fleet = Fleet.of(workers)
    assignments: list[Assignment] = []
    waiting: dict[str, NoFit] = {}
    for job in ordered:
        demand = Demand(gpus=job.gpus, vram=job.vram, products=job.products)
        view = fleet
        if job.avoid:
            eligible = fleet.eligible & ~np.isin(np.array(fleet.worker_names), list(job.avoid))
            eligible.flags.writeable = False
            view = dataclasses.replace(fleet, eligible=eligible)
        result = placement.place(view, Job(demand, job.model), mix)
        if isinstance(result, NoFit):
            waiting[job.key] = result
            continue
        fleet = placement.commit(fleet, result)
        assignments.append(Assignment(job.key, result))
    return Plan(tuple(assignments), waiting)
